// What the form of the ledger's batch parameter costs Postgres per row: the json array the ledger
// sends (json_populate_recordset) against one array per column (unnest), reading alone and
// inserting (every migration, the trigger, ON CONFLICT DO NOTHING), 256 rows a batch, variants
// taking turns batch by batch, the backend's CPU from /proc/<pid>/schedstat; medians over B batches.
//   node bench/param-forms.js            B (60)
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import postgres from 'postgres'
import { freshDatabase } from './db.js'
import { sampleRecord } from './sample-record.js'
import { ROOT } from './targets.js'
const { ROW_COLUMNS, toRow } = await import(join(ROOT, 'dist', 'usage', 'ledger', 'record.js'))
const { migrate } = await import(join(ROOT, 'dist', 'db', 'migrate.js'))
const N = 256, B = Number(process.env.B ?? 60)
const sql = postgres(await freshDatabase('usage_proxy_pf'), { max: 1, onnotice: () => {} })
await migrate(sql, join(ROOT, 'sql'))
await sql`insert into organizations (id, name) values ('bench_org', 'Bench')`
const types = Object.fromEntries((await sql`select a.attname, format_type(a.atttypid, a.atttypmod) t from pg_attribute a where a.attrelid = 'usage_events'::regclass and a.attnum > 0`).map((r) => [r.attname, r.t]))
const L = ROW_COLUMNS.join(', ')
const pid = (await sql`select pg_backend_pid() p`)[0].p
const cpu = () => Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0])
const isArr = (c) => types[c].endsWith('[]')
const unnestList = ROW_COLUMNS.map((c, i) => `$${i + 1}::${isArr(c) ? 'text' : types[c].replace(/\(.*\)/, '')}[]`).join(', ') + `) as u(${L}`
const unnestSel = ROW_COLUMNS.map((c) => isArr(c) ? `${c}::${types[c]}` : c).join(', ')
const cols = (rows) => ROW_COLUMNS.map((c) => rows.map((r) => r[c] === undefined ? null : (r[c] !== null && typeof r[c] === 'object' ? (Array.isArray(r[c]) ? '{' + r[c].map((x) => JSON.stringify(x)).join(',') + '}' : JSON.stringify(r[c])) : r[c])))
const variants = {
  jsonSelect: (rows) => sql`select count(*) from json_populate_recordset(null::usage_events, ${sql.typed(rows, 114)})`,
  unnestSelect: (rows) => sql.unsafe(`select count(*) from unnest(${unnestList})`, cols(rows).map((a) => a.map((v) => v === null ? null : String(v)))),
  jsonInsert: (rows) => sql`insert into usage_events (${sql.unsafe(L)}) select ${sql.unsafe(L)} from json_populate_recordset(null::usage_events, ${sql.typed(rows, 114)}) on conflict do nothing`,
  unnestInsert: (rows) => sql.unsafe(`insert into usage_events (${L}) select ${unnestSel} from unnest(${unnestList}) on conflict do nothing`, cols(rows).map((a) => a.map((v) => v === null ? null : String(v)))),
}
const res = {}
for (let b = 0; b < B; b++) for (const [name, fn] of Object.entries(variants)) {
  const rows = Array.from({ length: N }, (_, i) => toRow(sampleRecord(i)))
  const c0 = cpu(); await fn(rows); const d = cpu() - c0
  if (b >= 3) (res[name] ??= []).push(d / N / 1000)
}
for (const [k, v] of Object.entries(res)) { v.sort((a, b) => a - b); console.log(k.padEnd(14), 'median µs/row', v[v.length >> 1].toFixed(1)) }
await sql.end()
