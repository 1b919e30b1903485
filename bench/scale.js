// The ledger at size: fill a database with N synthetic usage rows inside Postgres, then time the
// billing queries on it. The same rows can be generated into today's unpartitioned schema
// (migrations 001-003 only) so the two can be compared side by side.
//
//   node bench/scale.js fill  --rows=10000000 --db=usage_proxy_bench_10m [--flat]
//   node bench/scale.js query --db=usage_proxy_bench_10m [--flat] [--runs=5] [--explain]
//   node bench/scale.js drop  --db=usage_proxy_bench_10m
//
// Rows: 12 months ending with the current one, 2,000 users in 5 organizations, 50 models (each
// user sticks to 3 of them, as people do), 80% chat turns and 20% background tasks, 2% failed
// upstream and 2% aborted by the client (half of those cancelled upstream), costs exact decimals. Everything derives from the row number, so the flat and partitioned databases hold
// the same rows. Prints one JSON object per command on stdout.
//
// `query` times the four billing questions below, then every SQL statement README.md and docs/
// print (test/doc-sql.mjs finds them, as test/readme-billing.test.ts does), with --explain their
// plans on stderr.
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import postgres from 'postgres'
import { dbUrl, freshDatabase } from './db.js'
import { ROOT } from './targets.js'
import { documentedStatements, forOrganization } from '../test/doc-sql.mjs'

const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
const command = process.argv[2]
const DB = arg('db', 'usage_proxy_bench_scale')
const FLAT = process.argv.includes('--flat')
const ROWS = Number(arg('rows', '1000000'))
const RUNS = Number(arg('runs', '5'))
const EXPLAIN = process.argv.includes('--explain')
const MONTHS = 12
const ORGS = 5
const USERS = 2000
const MODELS = 50

const open = (name) => postgres(dbUrl(name), { max: 1, onnotice: () => {}, connection: { application_name: 'usage-proxy-bench' } })
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const since = (t) => Math.round(performance.now() - t)

// Postgres's own 64-bit hash of the row number, one seed per attribute: deterministic, well
// spread, no random().
const h = (k) => `(abs(hashint8extended(i, ${k})) % 1000003)`

async function fill () {
  await freshDatabase(DB)
  const sql = open(DB)
  const t0 = performance.now()
  const files = readdirSync(join(ROOT, 'sql')).filter((f) => /^\d+_.*\.sql$/.test(f)).sort()
    .filter((f) => !FLAT || Number(f.slice(0, 3)) <= 3)
  // The current functions and triggers too (sql/functions, re-applied at every boot), as migrate() does.
  const functions = FLAT ? [] : readdirSync(join(ROOT, 'sql', 'functions')).filter((f) => f.endsWith('.sql')).sort().map((f) => join('functions', f))
  await sql.begin(async (tx) => { for (const f of [...files, ...functions]) await tx.unsafe(readFileSync(join(ROOT, 'sql', f), 'utf8')) })
  const [{ first }] = await sql`select (date_trunc('month', now() at time zone 'UTC') - interval '11 months')::date::text as first`
  if (!FLAT) {
    for (let m = 0; m < MONTHS; m++) await sql`select usage_ensure_partition((${first}::date + ${m} * interval '1 month')::date)`
  }
  await sql.unsafe(`insert into organizations (id, name, markup_percent)
    select 'bench_org_' || o, 'Bench Org ' || o, (o * 2.5)::numeric(9,4) from generate_series(0, ${ORGS - 1}) o`)
  await sql.unsafe(`insert into user_mappings (organization_id, user_id, external_user_id, user_name, user_email)
    select 'bench_org_' || (u % ${ORGS}), 'user-' || u, 'bench_org_' || (u % ${ORGS}) || '_u' || u, 'User ' || u, 'user' || u || '@example.com'
    from generate_series(0, ${USERS - 1}) u`)
  const perMonth = Math.ceil(ROWS / MONTHS)
  const months = []
  for (let m = 0; m < MONTHS; m++) {
    const lo = m * perMonth + 1
    const hi = Math.min(ROWS, (m + 1) * perMonth)
    const t = performance.now()
    // Triggers off while filling (session_replication_role): the generation ids and rollups are
    // computed below from the raw rows in one statement each, exactly what the triggers would add.
    await sql.begin(async (tx) => {
      await tx`set local session_replication_role = replica`
      await tx.unsafe(`insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model,
          served_model, provider, streamed, status, outcome, finish_reason, usage_source, prompt_tokens, completion_tokens, total_tokens,
          cached_tokens, reasoning_tokens, cost_usd, upstream_cost_usd, is_byok, markup_percent, latency_ms, ttfb_ms, chat_id,
          created_at, recorded_at, kind, message_id, cancelled)
        select md5('bench' || i)::uuid, 'gen-bench-' || i, 'bench_org_' || (u % ${ORGS}), 'user-' || u, 'bench_org_' || (u % ${ORGS}) || '_u' || u,
          'chat/completions', model, model, 'Provider ' || (${h(13)} % 7), i % 2 = 0, case when ${h(17)} % 50 = 0 then 502 else 200 end,
          case ${h(17)} % 50 when 0 then 'upstream_error' when 1 then 'client_aborted' else 'ok' end, 'stop', 'inline', pt, ct, pt + ct, pt / 4, 0,
          ((pt * 3 + ct * 11) * 0.00000017)::numeric(20,10), null, false, ((u % ${ORGS}) * 2.5)::numeric(9,4),
          (${h(23)} % 9000 + 200)::numeric(12,3), (${h(29)} % 900 + 50)::numeric(12,3), 'chat-' || (i % 100000),
          ts, ts + interval '2 seconds', case when ${h(31)} % 10 < 8 then 'chat' when ${h(31)} % 10 = 8 then 'title_generation' else 'tags_generation' end,
          md5('msg' || i), case when ${h(17)} % 50 = 1 then ${h(53)} % 2 = 0 end
        from (select i, u, 'vendor/model-' || ((u * 7 + (${h(37)} % 3) * 17) % ${MODELS}) as model,
                     (${h(41)} % 4000 + 20)::int as pt, (${h(43)} % 1500 + 5)::int as ct,
                     ('${first}'::date + interval '${m} months') at time zone 'UTC'
                       + (${h(47)}::double precision / 1000003) * (('${first}'::date + interval '${m + 1} months') - ('${first}'::date + interval '${m} months')) as ts
              from (select i, (${h(7919)} % ${USERS})::int as u from generate_series(${lo}::bigint, ${hi}::bigint) i) s) r`)
    })
    months.push(since(t))
    process.stderr.write(`month ${m + 1}/${MONTHS}: rows ${lo}-${hi} in ${months.at(-1)} ms\n`)
  }
  const tr = performance.now()
  if (!FLAT) {
    await sql`insert into usage_generation_ids (generation_id, created_at) select generation_id, created_at from usage_events`
    const [{ q }] = await sql`select usage_rollup_select('usage_events') as q`
    // In time order, organizations and users mixed within a day: the physical order the
    // sidecars' compaction produces over a year, not one clustered by organization.
    await sql.unsafe(`insert into usage_daily_rollups select * from (${q}) r order by day, md5(organization_id || external_user_id || model || kind)`)
    // The monthly and per-organization daily sums, as the compaction folds them from the same
    // deltas (sql/009): the invoice and the usage page read them.
    await sql`insert into usage_monthly_rollups
      select organization_id, date_trunc('month', day::timestamp)::date, external_user_id, model, kind,
             sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
             sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd), max(user_id)
      from usage_daily_rollups group by 1, 2, 3, 4, 5 order by 2, 1, 3, 4, 5`
    await sql`insert into usage_org_daily_rollups
      select organization_id, day, kind,
             sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
             sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd)
      from usage_daily_rollups group by 1, 2, 3 order by 2, 1, 3`
  }
  const rollupMs = since(tr)
  await sql.unsafe('vacuum analyze')
  const disk = await diskUsage(sql)
  out({ command: 'fill', db: DB, flat: FLAT, rows: ROWS, fillMs: since(t0), monthMs: months, rollupMs, ...disk })
  await sql.end()
}

async function diskUsage (sql) {
  const [d] = await sql`select
      (select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class c
        where c.relkind = 'r' and (c.relname = 'usage_events' or c.relname like 'usage_events\\_%'))::bigint as events_bytes,
      coalesce(pg_total_relation_size(to_regclass('usage_generation_ids')), 0)::bigint as generation_ids_bytes,
      coalesce(pg_total_relation_size(to_regclass('usage_daily_rollups')), 0)::bigint as rollups_bytes,
      (select count(*) from usage_events)::bigint as rows,
      pg_database_size(current_database())::bigint as database_bytes`
  const [r] = await sql`select to_regclass('usage_daily_rollups') is not null as present`
  d.rollup_rows = r.present ? (await sql`select count(*)::bigint as n from usage_daily_rollups`)[0].n : 0
  const total = Number(d.events_bytes) + Number(d.generation_ids_bytes) + Number(d.rollups_bytes)
  return {
    rows: Number(d.rows), rollupRows: Number(d.rollup_rows),
    eventsMB: mb(d.events_bytes), generationIdsMB: mb(d.generation_ids_bytes), rollupsMB: mb(d.rollups_bytes), databaseMB: mb(d.database_bytes),
    mbPerMillionRows: Math.round(total / 1048576 / (Number(d.rows) / 1e6) * 10) / 10,
  }
}

const mb = (b) => Math.round(Number(b) / 1048576)

async function query () {
  const sql = open(DB)
  const [{ month, next }] = await sql`select (date_trunc('month', now() at time zone 'UTC') - interval '1 month')::date::text as month,
    date_trunc('month', now() at time zone 'UTC')::date::text as next`
  const org = 'bench_org_2'
  const user = 'bench_org_2_u7'
  // The four questions billing asks, for last month (a whole month of data), through the views.
  const queries = {
    spendPerUserMonth: () => sql`select * from spend_per_user_month where organization_id = ${org} and month = ${month}`,
    spendPerModelMonth: () => sql`select * from spend_per_model_month where organization_id = ${org} and month = ${month}`,
    spendPerDayOfMonth: () => sql`select * from spend_per_day where organization_id = ${org} and day >= ${month} and day < ${next}`,
    oneUsersMonth: () => sql`select * from spend_per_user_month where organization_id = ${org} and month = ${month} and external_user_id = ${user}`,
  }
  const result = { command: 'query', db: DB, flat: FLAT, month, organization: org }
  for (const [name, run] of Object.entries(queries)) result[name] = await timed(sql, run)
  // Then every statement README.md and docs/ print, as printed (their example organization is
  // this one), each in a transaction rolled back so that a documented write leaves no trace.
  if (!FLAT) {
    result.documented = []
    for (const { file, title, sql: text } of documentedStatements(ROOT)) {
      const statement = forOrganization(text, org)
      const run = async () => {
        await sql.unsafe('begin')
        try {
          const t = performance.now()
          const rows = await sql.unsafe(statement)
          return Object.assign(rows, { ms: performance.now() - t })
        } finally {
          await sql.unsafe('rollback')
        }
      }
      let entry
      try {
        entry = { file, title, ...await timed(sql, run) }
      } catch (err) {
        entry = { file, title, error: err.message }
      }
      result.documented.push(entry)
      if (EXPLAIN) {
        await sql.unsafe('begin')
        try {
          const plan = await sql.unsafe(`explain (analyze, buffers, costs off) ${statement}`)
          process.stderr.write(`\n-- ${file}: ${title}\n${plan.map((r) => r['QUERY PLAN']).join('\n')}\n`)
        } finally { await sql.unsafe('rollback') }
      }
    }
  }
  Object.assign(result, await diskUsage(sql))
  out(result)
  await sql.end()
}

/**
 * Median of RUNS warm runs (one run first to warm the cache); a run may report its own `ms`.
 * cpuMs: the server process's own CPU time per run (utime + stime from /proc, the database being
 * on this machine), which other processes' load does not inflate the way it inflates wall time.
 */
async function timed (sql, run) {
  const times = []
  let rows = 0
  await run()
  const pid = Number((await sql`select pg_backend_pid() as pid`)[0].pid)
  const cpu0 = cpuTicks(pid)
  for (let i = 0; i < RUNS; i++) {
    const t = performance.now()
    const r = await run()
    times.push(r.ms ?? performance.now() - t)
    rows = r.length
  }
  const cpu1 = cpuTicks(pid)
  times.sort((a, b) => a - b)
  const cpuMs = cpu0 === null || cpu1 === null ? null : Math.round((cpu1 - cpu0) * (1000 / CLOCK_TICKS) / RUNS * 10) / 10
  return { medianMs: Math.round(times[Math.floor(times.length / 2)] * 10) / 10, cpuMs, rows, runsMs: times.map((x) => Math.round(x)) }
}

// USER_HZ: 100 on Linux everywhere it matters.
const CLOCK_TICKS = 100
function cpuTicks (pid) {
  try {
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
    return Number(fields[11]) + Number(fields[12])
  } catch { return null }
}

async function drop () {
  const admin = open('postgres')
  await admin.unsafe(`drop database if exists ${DB} with (force)`)
  await admin.end()
  out({ command: 'drop', db: DB })
}

if (!/^[a-z_][a-z0-9_]*$/.test(DB)) throw new Error(`unsafe database name ${DB}`)
if (command === 'fill') await fill()
else if (command === 'query') await query()
else if (command === 'drop') await drop()
else { process.stderr.write('usage: node bench/scale.js fill|query|drop --db=NAME [--rows=N] [--flat] [--runs=5] [--explain]\n'); process.exitCode = 2 }
