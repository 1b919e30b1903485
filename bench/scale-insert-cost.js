// Where a ledger batch's time goes with partitions and rollups: the ledger's own statement, 500
// rows a batch, one connection, on (a) today's flat table, (b) the partitioned table with its
// trigger disabled, (c) with only the generation-id claims, (d) with the whole trigger (generation ids + rollups).
//   node bench/scale-insert-cost.js [--batches=100]
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import postgres from 'postgres'
import { freshDatabase } from './db.js'
import { sampleRecord } from './sample-record.js'
import { ROOT } from './targets.js'

const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
const BATCHES = Number(arg('batches', '100'))
const { ROW_COLUMNS, toRow } = await import(join(ROOT, 'dist', 'usage', 'record.js'))
const batches = () => Array.from({ length: BATCHES }, () => Array.from({ length: 500 }, (_, i) => toRow(sampleRecord(i))))

async function measure (label, files, setup = async () => {}) {
  const sql = postgres(await freshDatabase('usage_proxy_bench_insert_cost'), { max: 1, onnotice: () => {} })
  await sql.begin(async (tx) => { for (const f of files) await tx.unsafe(readFileSync(join(ROOT, 'sql', f), 'utf8')) })
  await sql`insert into organizations (id, name) values ('bench_org', 'Bench')`
  await setup(sql)
  const data = batches()
  const insert = (rows) => sql`insert into usage_events (${sql(ROW_COLUMNS)})
    select ${sql(ROW_COLUMNS)} from json_populate_recordset(null::usage_events, ${sql.typed(rows, 114)}) on conflict do nothing`
  for (const b of data.slice(0, 5)) await insert(b) // warm
  const t = performance.now()
  for (const b of data.slice(5)) await insert(b)
  const ms = (performance.now() - t) / (data.length - 5)
  await sql.end()
  return { label, msPerBatch: Math.round(ms * 100) / 100, rowsPerSecondOneConnection: Math.round(500 / ms * 1000) }
}

const all = readdirSync(join(ROOT, 'sql')).filter((f) => /^\d+_.*\.sql$/.test(f)).sort()
const flat = all.filter((f) => Number(f.slice(0, 3)) <= 5) // before budgets (006) and partitions (007)
const out = []
out.push(await measure('flat (001-005)', flat))
out.push(await measure('partitioned, trigger disabled', all, (sql) => sql`alter table usage_events disable trigger usage_events_after_insert`))
out.push(await measure('partitioned + generation ids only', all, (sql) => sql.unsafe(`create or replace function usage_after_insert () returns trigger language plpgsql as $$
  begin
    insert into usage_generation_ids (generation_id, created_at)
    select distinct on (generation_id) generation_id, created_at from inserted_rows
    where generation_id is not null order by generation_id, event_id on conflict do nothing;
    return null;
  end $$`)))
out.push(await measure('partitioned + generation ids + rollups', all))
if (process.argv.includes('--variants')) {
  out.push(await measure('rollups fillfactor 50', all, (sql) => sql`alter table usage_daily_rollups set (fillfactor = 50)`))
  out.push(await measure('rollups without the month index', all, (sql) => sql`drop index usage_daily_rollups_org_month`))
}
process.stdout.write(JSON.stringify(out) + '\n')
