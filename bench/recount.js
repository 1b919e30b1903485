// Saving a budget at size: how long budget_recount() takes on a filled ledger (it reads the
// rollups and today's rows, sql/functions/2-budgets.sql), and how long an admission of another
// user waits while a recount is open. The data comes from bench/usage-api.js (12 months, 5
// organizations, 2,000 users):
//
//   npm run build
//   node bench/usage-api.js fill --rows=10000000 --db=usage_proxy_bench_recount
//   node bench/usage-api.js rollups --db=usage_proxy_bench_recount
//   node bench/recount.js --db=usage_proxy_bench_recount [--runs=5]
//
// Prints one JSON object: per budget kind the median and worst recount in ms, and the worst
// latency of admissions of another user made while that budget was being written.
import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import postgres from 'postgres'
import { dbUrl } from './db.js'
import { ROOT } from './targets.js'

const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
const DB = arg('db', 'usage_proxy_bench_recount')
const RUNS = Number(arg('runs', '5'))
const ORG = 'bench_org_0'
const since = (t) => Math.round((performance.now() - t) * 10) / 10
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

const sql = postgres(dbUrl(DB), { max: 4, onnotice: () => {} })
const { migrate } = await import(join(ROOT, 'dist', 'db', 'migrate.js'))
await migrate(sql, join(ROOT, 'sql')) // the current functions, whatever the fill ran
// The fill spreads the current month over all its days; a real ledger holds no row dated after
// now, and "today" would otherwise be the rest of the month's rows.
const [{ future }] = await sql`with d as (delete from usage_events where created_at > now() returning 1) select count(*)::bigint as future from d`
await sql`vacuum analyze usage_events`
const [{ rows }] = await sql`select count(*)::bigint as rows from usage_events`

const kinds = [
  ['organization month', 'organization', '', 'month'],
  ['organization total', 'organization', '', 'total'],
  ['default-user month (every user)', 'default-user', '', 'month'],
  ['one user week', 'user', 'user-5', 'week'],
  ['one user total', 'user', 'user-5', 'total'],
]
const write = (q, scope, user, period, limit) => q`
  insert into budgets (organization_id, scope, user_id, limit_usd, period) values (${ORG}, ${scope}, ${user}, ${limit}, ${period})
  on conflict (organization_id, scope, user_id) do update set limit_usd = excluded.limit_usd, period = excluded.period`

const results = {}
for (const [name, scope, user, period] of kinds) {
  const times = []
  for (let r = 0; r < RUNS; r++) {
    const t = performance.now()
    await write(sql, scope, user, period, 1000 + r)
    times.push(since(t))
  }
  // Admissions of another user of the same organization, one after another, while the same
  // budget is written again (as the admin API does: one statement, committed at once).
  let admissionMs = 0
  let admissions = 0
  for (let r = 0; r < RUNS; r++) {
    let done = false
    const writing = write(sql, scope, user, period, 2000 + r).then(() => { done = true })
    while (!done) {
      const t = performance.now()
      await sql`select * from budget_reserve(${ORG}, 'user-10', ${randomUUID()}, 0.001, now(), interval '1 minute')`
      admissionMs = Math.max(admissionMs, since(t))
      admissions++
    }
    await writing
  }
  results[name] = { medianMs: median(times), worstMs: Math.max(...times), admissionsDuringRecount: admissions, admissionWorstMs: admissionMs }
}
await sql`delete from budget_reservations`
process.stdout.write(JSON.stringify({ db: DB, rows: Number(rows), futureRowsDeleted: Number(future), runs: RUNS, results }) + '\n')
await sql.end()
