// The usage views at size: fill a database with N synthetic usage rows inside Postgres (schema of
// sql/, generate_series, no client round trips), start the sidecar on it, and time every admin API
// call behind the /admin/ page, the statement and the "My usage" answer.
//
//   npm run build && node bench/usage-api.js fill --rows=10000000 [--db=usage_proxy_bench_usage]
//   node bench/usage-api.js rollups [--db=...]     (re)build usage_daily_rollups (migration 007) and
//                                                  usage_monthly_rollups, usage_org_daily_rollups (migration 009) from them
//   node bench/usage-api.js time [--db=...] [--runs=5]
//
// Rows: 12 months ending with the current one, 5 organizations, 2,000 users (each sticks to 3 of
// 50 models), 80% chat, 20% background tasks, 2% upstream errors, exact decimal costs. The same
// shape as bench/scale.js, with external user ids derived the way the sidecar derives
// them, so ?user= finds them. Prints one JSON object per command on stdout.
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import postgres from 'postgres'
import { dbUrl, freshDatabase } from './db.js'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
const command = process.argv[2]
const DB = arg('db', 'usage_proxy_bench_usage')
const ROWS = Number(arg('rows', '1000000'))
const RUNS = Number(arg('runs', '5'))
const MONTHS = 12
const ORGS = 5
const USERS = 2000
const MODELS = 50
const ORG = 'bench_org_2'
const ADMIN_KEY = 'bench-admin-key-0123456789'

const open = (name) => postgres(dbUrl(name), { max: 1, onnotice: () => {}, connection: { application_name: 'usage-proxy-bench' } })
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const since = (t) => Math.round(performance.now() - t)
const h = (k) => `(abs(hashint8extended(i, ${k})) % 1000003)`
// externalUserId() of src/identity/external-id.ts, in SQL
const ext = (org, uid) => `${org} || '_user_' || left(encode(sha256(convert_to(${org}, 'UTF8') || '\\x00'::bytea || convert_to(${uid}, 'UTF8')), 'hex'), 16)`

async function fill () {
  await freshDatabase(DB)
  const sql = open(DB)
  const t0 = performance.now()
  const { migrate } = await import('../dist/db/migrate.js')
  await migrate(sql, join(ROOT, 'sql'))
  const [{ first }] = await sql`select (date_trunc('month', now() at time zone 'UTC') - interval '11 months')::date::text as first`
  await sql.unsafe(`insert into organizations (id, name, markup_percent)
    select 'bench_org_' || o, 'Bench Org ' || o, (o * 2.5)::numeric(9,4) from generate_series(0, ${ORGS - 1}) o`)
  await sql.unsafe(`insert into user_mappings (organization_id, user_id, external_user_id, user_name, user_email)
    select org, uid, ${ext('org', 'uid')}, 'User ' || u, 'user' || u || '@example.com'
    from (select u, 'bench_org_' || (u % ${ORGS}) as org, 'user-' || u as uid from generate_series(0, ${USERS - 1}) u) s`)
  // One partition per month, as the sidecar's maintenance creates them (rows must not land in the default).
  for (let m = 0; m < MONTHS; m++) await sql`select usage_ensure_partition((${first}::date + ${m} * interval '1 month')::date)`
  // The rollups are built by `rollups` from the raw rows, in one pass: the insert trigger's deltas
  // (and its generation-id claims) would only make the fill slower.
  await sql`alter table usage_events disable trigger usage_events_after_insert`
  // Indexes are built once after the fill: cheaper than maintaining them row by row.
  const indexes = await sql`select indexname, indexdef from pg_indexes where tablename = 'usage_events' and indexname not like '%pkey'`
  for (const { indexname } of indexes) await sql`drop index ${sql(indexname)}`
  const perMonth = Math.ceil(ROWS / MONTHS)
  for (let m = 0; m < MONTHS; m++) {
    const lo = m * perMonth + 1
    const hi = Math.min(ROWS, (m + 1) * perMonth)
    const t = performance.now()
    await sql.unsafe(`insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model,
        served_model, provider, streamed, status, outcome, finish_reason, usage_source, prompt_tokens, completion_tokens, total_tokens,
        cached_tokens, reasoning_tokens, cost_usd, is_byok, markup_percent, latency_ms, ttfb_ms, chat_id, created_at, kind)
      select md5('bench' || i)::uuid, 'gen-bench-' || i, org, uid, ${ext('org', 'uid')},
        'chat/completions', model, model, 'Provider ' || (${h(13)} % 7), i % 2 = 0, case when ${h(17)} % 50 = 0 then 502 else 200 end,
        case when ${h(17)} % 50 = 0 then 'upstream_error' else 'ok' end, 'stop', 'inline', pt, ct, pt + ct, pt / 4, 0,
        ((pt * 3 + ct * 11) * 0.00000017)::numeric(20,10), false, ((u % ${ORGS}) * 2.5)::numeric(9,4),
        (${h(23)} % 9000 + 200)::numeric(12,3), (${h(29)} % 900 + 50)::numeric(12,3), 'chat-' || (i % 100000), ts,
        case when ${h(31)} % 10 < 8 then 'chat' when ${h(31)} % 10 = 8 then 'title_generation' else 'tags_generation' end
      from (select i, u, 'bench_org_' || (u % ${ORGS}) as org, 'user-' || u as uid,
                   'vendor/model-' || ((u * 7 + (${h(37)} % 3) * 17) % ${MODELS}) as model,
                   (${h(41)} % 4000 + 20)::int as pt, (${h(43)} % 1500 + 5)::int as ct,
                   ('${first}'::date + interval '${m} months') at time zone 'UTC'
                     + (${h(47)}::double precision / 1000003) * (('${first}'::date + interval '${m + 1} months') - ('${first}'::date + interval '${m} months')) as ts
            from (select i, (${h(7919)} % ${USERS})::int as u from generate_series(${lo}::bigint, ${hi}::bigint) i) s) r`)
    process.stderr.write(`month ${m + 1}/${MONTHS}: rows ${lo}-${hi} in ${since(t)} ms\n`)
  }
  const ti = performance.now()
  // pg_indexes names a partitioned table's index ON ONLY the parent: without ONLY it is built on every partition.
  for (const { indexdef } of indexes) await sql.unsafe(indexdef.replace(' ON ONLY ', ' ON '))
  await sql`alter table usage_events enable trigger usage_events_after_insert`
  await sql.unsafe('vacuum analyze')
  const [{ rows, mb }] = await sql`select count(*)::int as rows, (pg_database_size(current_database()) / 1048576)::int as mb from usage_events`
  out({ command: 'fill', db: DB, rows, databaseMB: mb, fillMs: since(t0), indexMs: since(ti), indexes: indexes.map((i) => i.indexname) })
  await sql.end()
}

// The daily rollups (migration 007), built from the raw rows in one pass, with
// usage_rollup_select(), the definition the trigger and `usage-proxy verify` use; then the monthly
// and per-organization day rollups (migration 009) from them, as that migration fills them.
async function rollups () {
  const sql = open(DB)
  const t = performance.now()
  await sql`create table if not exists usage_daily_rollups (
    organization_id text not null, day date not null, external_user_id text not null, model text not null, kind text not null,
    requests bigint not null, failed_or_aborted bigint not null, prompt_tokens bigint not null, completion_tokens bigint not null,
    total_tokens bigint not null, cached_tokens bigint not null, reasoning_tokens bigint not null, cost_usd numeric not null,
    upstream_cost_usd numeric not null, billed_cost_usd numeric not null,
    primary key (organization_id, day, external_user_id, model, kind))`
  const [{ monthly, deltas }] = await sql`select to_regclass('usage_monthly_rollups') is not null as monthly, to_regclass('usage_rollup_deltas') is not null as deltas`
  await sql`truncate usage_daily_rollups`
  if (deltas) await sql`truncate usage_rollup_deltas`
  await sql`set work_mem = '1500MB'` // one hash aggregate in memory rather than a sort spilled to disk
  const [{ q }] = await sql`select usage_rollup_select('usage_events') as q`
  await sql.unsafe('insert into usage_daily_rollups ' + q)
  await sql`vacuum analyze usage_daily_rollups`
  const [{ n }] = await sql`select count(*)::int as n from usage_daily_rollups`
  let monthlyRows = null
  if (monthly) {
    await sql`truncate usage_monthly_rollups`
    await sql`insert into usage_monthly_rollups
      select organization_id, date_trunc('month', day::timestamp)::date, external_user_id, model, kind,
             sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
             sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd), max(user_id)
      from usage_daily_rollups group by 1, 2, 3, 4, 5`
    await sql`vacuum analyze usage_monthly_rollups`
    monthlyRows = (await sql`select count(*)::int as n from usage_monthly_rollups`)[0].n
    await sql`truncate usage_org_daily_rollups`
    await sql`insert into usage_org_daily_rollups
      select organization_id, day, kind,
             sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
             sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd)
      from usage_daily_rollups group by 1, 2, 3`
    await sql`vacuum analyze usage_org_daily_rollups`
  }
  out({ command: 'rollups', db: DB, rollupRows: n, monthlyRollupRows: monthlyRows, ms: since(t) })
  await sql.end()
}

async function time () {
  const { start } = await import('../dist/main.js')
  const { createLogger } = await import('../dist/lib/log.js')
  const { buildStatement } = await import('../dist/usage/reports/statement.js')
  const { myUsageSummary } = await import('../dist/usage/reports/my-usage.js')
  const { externalUserId } = await import('../dist/identity/external-id.js')
  const { noBudgets } = await import('../dist/usage/reports/budget-seam.js')
  const sidecar = await start({
    OPENROUTER_API_KEY: 'sk-or-v1-bench-0123456789', OPENROUTER_EXTERNAL_USER: ORG, ORGANIZATION_NAME: 'Bench Org 2',
    MARKUP_PERCENT: '5', DATABASE_URL: dbUrl(DB), OPENROUTER_BASE_URL: 'http://127.0.0.1:9/api/v1', PORT: '0', HOST: '127.0.0.1',
    ADMIN_API_KEY: ADMIN_KEY, DATA_DIR: mkdtempSync(join(tmpdir(), 'usage-api-bench-')), LOG_LEVEL: 'warn',
  }, createLogger('warn'))
  await sidecar.ready
  const base = `http://127.0.0.1:${sidecar.port}`
  const sql = open(DB)
  const [{ rows }] = await sql`select count(*)::int as rows from usage_events`
  const [{ last, cur, next }] = await sql`select (date_trunc('month', now() at time zone 'UTC') - interval '1 month')::date::text as last,
    date_trunc('month', now() at time zone 'UTC')::date::text as cur, (date_trunc('month', now() at time zone 'UTC') + interval '1 month')::date::text as next`
  const [{ n: orgMonthRows }] = await sql`select count(*)::int as n from usage_events where organization_id = ${ORG} and created_at >= ${last}::timestamptz and created_at < ${cur}::timestamptz`
  const p = `from=${last}&to=${cur}`
  const year = `from=${cur.slice(0, 4) - 1}${cur.slice(4)}&to=${next}`
  const [{ tomorrow }] = await sql`select ((now() at time zone 'UTC')::date + 1)::text as tomorrow`
  const first = await get(base, `/admin/v1/events?${p}&limit=50`)
  const cursor = JSON.parse(first.text).next_cursor
  const calls = {
    'usage group_by=day (chart, totals)': `/admin/v1/usage?${p}&group_by=day`,
    'usage group_by=user (users table)': `/admin/v1/usage?${p}&group_by=user`,
    'usage group_by=model': `/admin/v1/usage?${p}&group_by=model`,
    'usage group_by=task': `/admin/v1/usage?${p}&group_by=task`,
    'usage group_by=outcome': `/admin/v1/usage?${p}&group_by=outcome`,
    'usage group_by=user, CSV': `/admin/v1/usage?${p}&group_by=user&format=csv`,
    'usage default period (this month), group_by=day': '/admin/v1/usage?group_by=day',
    'usage a 12-month range, group_by=model': `/admin/v1/usage?${year}&group_by=model`,
    'usage a 12-month range, group_by=day (chart, totals)': `/admin/v1/usage?${year}&group_by=day`,
    'usage a 12-month range, group_by=user': `/admin/v1/usage?${year}&group_by=user`,
    'usage a 12-month range, group_by=task': `/admin/v1/usage?${year}&group_by=task`,
    'usage a 12-month range, group_by=outcome': `/admin/v1/usage?${year}&group_by=outcome`,
    'user page, a 12-month range: usage group_by=day&user=': `/admin/v1/usage?${year}&group_by=day&user=user-7`,
    'user page, a 12-month range: usage group_by=model&user=': `/admin/v1/usage?${year}&group_by=model&user=user-7`,
    'usage "This year" preset (to today), group_by=user': `/admin/v1/usage?from=${cur.slice(0, 4)}-01-01&to=${tomorrow}&group_by=user`,
    'user page: usage group_by=day&user=': `/admin/v1/usage?${p}&group_by=day&user=user-7`,
    'user page: usage group_by=model&user=': `/admin/v1/usage?${p}&group_by=model&user=user-7`,
    'user page: events user= limit=50': `/admin/v1/events?${p}&user=user-7&limit=50`,
    'events limit=50 (first page)': `/admin/v1/events?${p}&limit=50`,
    'events next page (cursor)': `/admin/v1/events?${p}&limit=50&cursor=${cursor}`,
    'events outcome=upstream_error limit=100': `/admin/v1/events?${p}&outcome=upstream_error&limit=100`,
    'events model= limit=1000, CSV': `/admin/v1/events?${p}&model=vendor/model-7&limit=1000&format=csv`, // a model this organization never used
    'events model= (a model it uses) limit=1000, CSV': `/admin/v1/events?${p}&model=vendor/model-14&limit=1000&format=csv`,
  }
  const results = []
  for (const [name, path] of Object.entries(calls)) {
    const r = await measure(async () => { const res = await get(base, path); if (res.status !== 200) throw new Error(`${path}: ${res.status} ${res.text.slice(0, 200)}`); return res.text.length })
    results.push({ call: name, path, ...r })
  }
  const readSql = postgres(dbUrl(DB), { max: 2, onnotice: () => {} })
  results.push({ call: 'statement --month (one organization)', ...await measure(async () => (await buildStatement(readSql, ORG, last.slice(0, 7))).organizations[0].lines.length) })
  results.push({ call: 'statement --month --all-organizations', ...await measure(async () => (await buildStatement(readSql, undefined, last.slice(0, 7))).organizations.length) })
  results.push({ call: 'My usage answer (summary queries)', ...await measure(async () => (await myUsageSummary(readSql, { organizationId: ORG, userId: 'user-7', externalUserId: externalUserId(ORG, 'user-7'), budgetFor: noBudgets })).length) })
  const [{ present, monthly }] = await sql`select to_regclass('usage_daily_rollups') is not null as present, to_regclass('usage_monthly_rollups') is not null as monthly`
  out({ command: 'time', db: DB, rows, organizationMonthRows: orgMonthRows, rollups: present, monthlyRollups: monthly, runs: RUNS, results })
  await readSql.end()
  await sql.end()
  await sidecar.stop('bench end')
}

async function get (base, path) {
  const res = await request(base + path, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
  return { status: res.statusCode, text: await res.body.text() }
}

/** The first (cold) call, then the median and the slowest of RUNS warm calls, in ms. */
async function measure (run) {
  let t = performance.now()
  const size = await run()
  const cold = performance.now() - t
  const times = []
  for (let i = 0; i < RUNS; i++) { t = performance.now(); await run(); times.push(performance.now() - t) }
  times.sort((a, b) => a - b)
  const r = (x) => Math.round(x * 10) / 10
  return { coldMs: r(cold), medianMs: r(times[Math.floor(times.length / 2)]), maxMs: r(times.at(-1)), size }
}

if (command === 'fill') await fill()
else if (command === 'time') await time()
else if (command === 'rollups') await rollups()
else { process.stderr.write('usage: node bench/usage-api.js fill|time [--rows=N] [--db=NAME] [--runs=N]\n'); process.exit(2) }
