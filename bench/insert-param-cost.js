// What the ledger batch parameter costs Postgres per row: jsonb (sql.json) vs json, with and without
// the insert, on the whole schema (every migration), one connection, N rows a batch (N=300).
//   node bench/insert-param-cost.js
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import postgres from 'postgres'
import { freshDatabase } from './db.js'
import { sampleRecord } from './sample-record.js'
import { ROOT } from './targets.js'
const { ROW_COLUMNS, toRow } = await import(join(ROOT, 'dist', 'usage', 'ledger', 'record.js'))
const N = Number(process.env.N ?? 300), B = 40
const all = readdirSync(join(ROOT, 'sql')).filter((f) => /^\d+_.*\.sql$/.test(f)).sort()
const sql = postgres(await freshDatabase('usage_proxy_ins'), { max: 1, onnotice: () => {} })
await sql.begin(async (tx) => { for (const f of all) await tx.unsafe(readFileSync(join(ROOT, 'sql', f), 'utf8')) })
await sql`insert into organizations (id, name) values ('bench_org', 'Bench')`
const L = ROW_COLUMNS.join(', ')
const variants = {
  jsonb: (rows) => sql`insert into usage_events (${sql.unsafe(L)}) select ${sql.unsafe(L)} from jsonb_populate_recordset(null::usage_events, ${sql.json(rows)}) on conflict do nothing`,
  json: (rows) => sql`insert into usage_events (${sql.unsafe(L)}) select ${sql.unsafe(L)} from json_populate_recordset(null::usage_events, ${JSON.stringify(rows)}::text::json) on conflict do nothing`,
  jsonNoConflict: (rows) => sql`insert into usage_events (${sql.unsafe(L)}) select ${sql.unsafe(L)} from json_populate_recordset(null::usage_events, ${JSON.stringify(rows)}::text::json)`,
  selectOnly: (rows) => sql`select count(*) from json_populate_recordset(null::usage_events, ${JSON.stringify(rows)}::text::json)`,
  selectOnlyB: (rows) => sql`select count(*) from jsonb_populate_recordset(null::usage_events, ${sql.json(rows)})`,
}
const cpuOf = async () => { const r = await sql`select pg_backend_pid() as p`; const f = readFileSync(`/proc/${r[0].p}/stat`, 'utf8').split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) * 10 }
for (let rep = 0; rep < 2; rep++) for (const [name, fn] of Object.entries(variants)) {
  const data = Array.from({ length: B }, () => Array.from({ length: N }, (_, i) => toRow(sampleRecord(i))))
  for (const b of data.slice(0, 3)) await fn(b)
  const c0 = await cpuOf(); const t = performance.now()
  for (const b of data.slice(3)) await fn(b)
  const ms = performance.now() - t; const cpu = await cpuOf() - c0
  console.log(name.padEnd(16), (ms * 1000 / ((B - 3) * N)).toFixed(1), 'µs/row wall', (cpu * 1000 / ((B - 3) * N)).toFixed(1), 'µs/row pg cpu')
}
await sql.end()
