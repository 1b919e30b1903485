// How long the reports by group take at size: the group rollups filled as a year of an
// organization leaves them (every day, --users users, half of them in two of 40 groups, each
// using 7 models in 2 kinds), then the usage API's group queries and the psql view timed.
//   npm run build && node bench/group-report-time.js [--users=200] [--months=12]
import { join } from 'node:path'
import postgres from 'postgres'
import { freshDatabase } from './db.js'
import { ROOT } from './targets.js'

const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
const USERS = Number(arg('users', '200'))
const MONTHS = Number(arg('months', '12'))
const { migrate } = await import(join(ROOT, 'dist', 'db', 'migrate.js'))
const { usageByGroup, usageTotals } = await import(join(ROOT, 'dist', 'usage', 'reports', 'usage-report.js'))

const sql = postgres(await freshDatabase('usage_proxy_bench_group_reports'), { max: 1, onnotice: () => {} })
await migrate(sql, join(ROOT, 'sql'))
await sql`insert into organizations (id, name) values ('bench_org', 'Bench')`
const first = new Date(Date.UTC(2026, 0, 1))
const last = new Date(Date.UTC(2026, MONTHS, 1))
// Users 0..USERS-1; user u is in group u % 40, and every other user also in group (u * 7) % 40.
await sql`
  insert into usage_group_daily_rollups
  select 'bench_org', d::date, g.group_id, 'bench_org_u' || u, 'vendor/model-' || m, k,
         3, 0, 126, 72, 198, 0, 0, 0.0000801, 0, 0.0000801, 'user-' || u
  from generate_series(${first.toISOString()}::timestamptz, ${last.toISOString()}::timestamptz - interval '1 day', interval '1 day') d,
       generate_series(0, ${USERS - 1}) u,
       lateral (select 'group-' || (u % 40) as group_id union select 'group-' || ((u * 7) % 40) where u % 2 = 0) g,
       generate_series(0, 6) m,
       (values ('chat'), ('title_generation')) kk(k)
  on conflict do nothing`
// The monthly group rollups as the compaction leaves them (and as migration 023 fills them).
await sql`
  insert into usage_group_monthly_rollups
  select organization_id, date_trunc('month', day::timestamp)::date, group_id, external_user_id, model, kind,
         sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
         sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd), max(user_id)
  from usage_group_daily_rollups group by 1, 2, 3, 4, 5, 6`
await sql`analyze usage_group_daily_rollups`
await sql`analyze usage_group_monthly_rollups`
const [{ n }] = await sql`select count(*)::int as n from usage_group_daily_rollups`
const from = new Date(Date.UTC(2026, MONTHS - 1, 1)).toISOString().slice(0, 10)
const to = last.toISOString().slice(0, 10)
const p = { organizationId: 'bench_org', from, to }
const cases = {
  'group_by=group, last month': () => usageByGroup(sql, p, 'group', 'monthly'),
  'group_by=user&group=group-3, last month': () => usageByGroup(sql, { ...p, group: 'group-3' }, 'user', 'monthly'),
  'group_by=day&group=group-3, last month': () => usageByGroup(sql, { ...p, group: 'group-3' }, 'day', 'monthly'),
  'totals of group-3, last month': () => usageTotals(sql, { ...p, group: 'group-3' }, 'monthly'),
  'spend_per_group_month, last month': () => sql`select * from spend_per_group_month where month = ${from}::date`,
  'group_by=group, the whole year': () => usageByGroup(sql, { organizationId: 'bench_org', from: first.toISOString().slice(0, 10), to }, 'group', 'monthly'),
}
const out = { groupRollupRows: n, rowsPerMonth: Math.round(n / MONTHS), results: [] }
for (const [label, q] of Object.entries(cases)) {
  await q()
  const t = []
  for (let i = 0; i < 5; i++) { const s = performance.now(); await q(); t.push(performance.now() - s) }
  t.sort((a, b) => a - b)
  out.results.push({ label, medianMs: Math.round(t[2] * 10) / 10 })
}
await sql.end()
process.stdout.write(JSON.stringify(out, null, 1) + '\n')
