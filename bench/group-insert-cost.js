// What the group rollups (sql/023, step 4 of the insert trigger) cost a ledger batch: the ledger's
// own insert statement, 2,000 rows a batch, one connection, with the trigger as it is and with
// step 4 taken out, for rows without groups and for rows in two groups. The two trigger
// definitions alternate every few batches, so a busy machine slows both alike.
//   npm run build && node bench/group-insert-cost.js [--rounds=20] [--per-round=5]
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import postgres from 'postgres'
import { freshDatabase } from './db.js'
import { sampleRecord } from './sample-record.js'
import { ROOT } from './targets.js'

const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
const ROUNDS = Number(arg('rounds', '20'))
const PER_ROUND = Number(arg('per-round', '5'))
const BATCH = 2000
const { ROW_COLUMNS, toRow } = await import(join(ROOT, 'dist', 'usage', 'ledger', 'record.js'))
const { migrate } = await import(join(ROOT, 'dist', 'db', 'migrate.js'))

const withStep4 = readFileSync(join(ROOT, 'sql', 'functions', '3-usage-after-insert.sql'), 'utf8')
const start = withStep4.indexOf('  -- 4. the group rollups')
const end = withStep4.indexOf('  RETURN NULL;', start)
if (start < 0 || end < 0) throw new Error('step 4 not found in 3-usage-after-insert.sql')
const withoutStep4 = withStep4.slice(0, start) + withStep4.slice(end)

const sql = postgres(await freshDatabase('usage_proxy_bench_group_cost'), { max: 1, onnotice: () => {} })
await migrate(sql, join(ROOT, 'sql'))
await sql`insert into organizations (id, name) values ('bench_org', 'Bench')`
const insert = (rows) => sql`insert into usage_events (${sql(ROW_COLUMNS)})
  select ${sql(ROW_COLUMNS)} from json_populate_recordset(null::usage_events, ${sql.typed(rows, 114)}) on conflict do nothing`
const batch = (groups) => Array.from({ length: BATCH }, (_, i) => toRow({ ...sampleRecord(i), groups: groups(i) }))
const NONE = () => []
const TWO = (i) => [`group-${i % 20}`, `group-${(i + 7) % 20}`].sort()

const times = {}
async function run (label, fn, groups) {
  await sql.unsafe(fn)
  for (let i = 0; i < PER_ROUND; i++) {
    const rows = batch(groups)
    const t = performance.now()
    await insert(rows)
    ;(times[label] ??= []).push(performance.now() - t)
  }
}
for (let r = 0; r < 2; r++) { await run('warm', withStep4, TWO); await run('warm', withoutStep4, NONE) }
delete times.warm
for (let r = 0; r < ROUNDS; r++) {
  await run('no groups, trigger without step 4', withoutStep4, NONE)
  await run('no groups, trigger with step 4', withStep4, NONE)
  await run('two groups each, trigger with step 4', withStep4, TWO)
  await sql`select usage_rollup_compact()`
}
await sql.unsafe(withStep4)
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)] }
const out = Object.entries(times).map(([label, t]) => ({ label, batches: t.length, medianMsPerBatch: Math.round(median(t) * 10) / 10, usPerRow: Math.round(median(t) / BATCH * 1000 * 10) / 10 }))
await sql.end()
process.stdout.write(JSON.stringify(out, null, 1) + '\n')
