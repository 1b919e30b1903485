// The export's bench (`node bench/export.js`, after `npm run build`):
//  1. export throughput: N committed rows (BENCH_EXPORT_ROWS, 100000) delivered to a local
//     CloudEvents receiver (batches of 100 and 1000) and M (BENCH_EXPORT_STRIPE_ROWS, 20000) to a
//     local Stripe endpoint (one request per event, as Stripe's v1 API takes them), events/s;
//  2. the data plane at c=64 (non-streamed, BENCH_SECONDS each, BENCH_ROUNDS alternating rounds)
//     with the export off and on (CloudEvents to the local receiver), in the same run.
// BENCH_EXPORT_THROUGHPUT=0 skips part 1.
// Needs Postgres on loopback (BENCH_PG_URL). Prints Markdown.
import { join } from 'node:path'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { start, stop, stopAll, freePort, waitHttp } from './children.js'
import { freshDatabase, openDb } from './db.js'
import { measure } from './measure.js'
import { BENCH, ROOT, startUpstreamProcess, startUsageProxy } from './targets.js'

const num = (name, dflt) => (process.env[name] ? Number(process.env[name]) : dflt)
const ROWS = num('BENCH_EXPORT_ROWS', 100_000)
const STRIPE_ROWS = num('BENCH_EXPORT_STRIPE_ROWS', 20_000)
const SECONDS = num('BENCH_SECONDS', 4)
const ROUNDS = num('BENCH_ROUNDS', 2)
const say = (m) => process.stderr.write(`bench-export: ${m}\n`)
const dist = (p) => import(join(ROOT, 'dist', p))

const tmp = mkdtempSync(join(tmpdir(), 'bench-export-'))
const rport = await freePort()
const receiver = start('export-receiver', process.execPath, [join(BENCH, 'export-receiver.js'), `--port=${rport}`], { logPath: join(tmp, 'receiver.log') })
await waitHttp(`http://127.0.0.1:${rport}/count`, { child: receiver })
const count = async () => (await (await fetch(`http://127.0.0.1:${rport}/count`)).json())
const reset = () => fetch(`http://127.0.0.1:${rport}/reset`, { method: 'POST' })

async function throughput (label, rows, makeSink) {
  const url = await freshDatabase('bench_export')
  const sql = openDb(url)
  const { migrate } = await dist('db/migrate.js')
  await migrate(sql, join(ROOT, 'sql'))
  await sql`INSERT INTO organizations (id, name, markup_percent) VALUES ('bench_org', 'Bench', 12.5)`
  await sql`INSERT INTO billing_customers (organization_id, scope, subject, stripe_customer_id) VALUES ('bench_org', 'organization', '', 'cus_Bench')`
  for (let done = 0; done < rows; done += 10_000) {
    await sql`INSERT INTO usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status, outcome, usage_source,
        prompt_tokens, completion_tokens, total_tokens, cost_usd, markup_percent, created_at)
      SELECT gen_random_uuid(), 'gen-' || gen_random_uuid(), 'bench_org', 'u' || (i % 50), 'x', 'chat/completions', 'm', false, 200, 'ok', 'inline',
        100, 20, 120, (i % 997) * 0.000001234, 12.5, now() - (i % 1000) * interval '1 second'
      FROM generate_series(1, ${Math.min(10_000, rows - done)}) i`
  }
  await reset()
  const pool = (await import('postgres')).default(url, { max: 4, onnotice: () => {} })
  const { startExporter } = await dist('export/exporter.js')
  const { createLogger } = await dist('lib/log.js')
  const t0 = performance.now()
  const exporter = startExporter([await makeSink(pool)], { sql: pool, organizationId: 'bench_org', log: createLogger('warn'), pollMs: 10 })
  while ((await count()).distinct < rows) await new Promise((r) => setTimeout(r, 20))
  const seconds = (performance.now() - t0) / 1000
  await exporter.stop()
  const c = await count()
  await pool.end({ timeout: 1 })
  await sql.end({ timeout: 1 })
  say(`${label}: ${rows} rows in ${seconds.toFixed(2)} s`)
  return { label, rows, seconds, perSecond: rows / seconds, events: c.events, distinct: c.distinct }
}

const results = []
const THROUGHPUT = process.env.BENCH_EXPORT_THROUGHPUT !== '0'
const { cloudEventsSink } = await dist('export/cloudevents-sink.js')
const { stripeSink } = await dist('export/stripe-sink.js')
if (THROUGHPUT) results.push(await throughput('CloudEvents, batches of 100', ROWS, () => cloudEventsSink({ url: `http://127.0.0.1:${rport}/events`, source: 'bench_org', batchSize: 100 })))
if (THROUGHPUT) results.push(await throughput('CloudEvents, batches of 1000', ROWS, () => cloudEventsSink({ url: `http://127.0.0.1:${rport}/events`, source: 'bench_org', batchSize: 1000 })))
if (THROUGHPUT) results.push(await throughput('Stripe meter events (one customer-month: sequential)', STRIPE_ROWS, (pool) => stripeSink({
  sql: pool, organizationId: 'bench_org', secretKey: 'sk_test_bench00000000', apiBase: `http://127.0.0.1:${rport}`, eventName: 'llm_usage', value: 'billed_micro_usd', batchSize: 100,
})))

// The data plane with the export off and on, alternating.
await reset()
const upstream = await startUpstreamProcess(tmp)
const plane = []
for (const on of [false, true]) {
  const name = on ? 'usage-proxy-export-on' : 'usage-proxy-export-off'
  const url = await freshDatabase(on ? 'bench_export_on' : 'bench_export_off')
  const extraEnv = on ? { CLOUDEVENTS_URL: `http://127.0.0.1:${rport}/events`, EXPORT_POLL_MS: '200' } : {}
  plane.push({ on, url, target: await startUsageProxy({ tmp, upstreamPort: upstream.port, databaseUrl: url, name, extraEnv }), runs: [] })
}
const scenario = { name: 'c64', concurrency: 64, stream: false }
for (let round = 0; round < ROUNDS; round++) {
  for (const p of plane) {
    const ledgerSql = openDb(p.url)
    const m = await measure({ target: p.target, scenario, seconds: SECONDS, warmupSeconds: 0.5, upstreamPid: upstream.child.pid, ledgerSql })
    await ledgerSql.end({ timeout: 1 })
    p.runs.push(m)
    say(`c64 export ${p.on ? 'on' : 'off'} round ${round + 1}: ${m.rps?.toFixed?.(0) ?? JSON.stringify(m).slice(0, 200)} req/s`)
  }
}
// What the exporter delivered of the export-on sidecar's rows, once it caught up.
const onDb = openDb(plane[1].url)
const [{ n }] = await onDb`SELECT count(*)::int AS n FROM usage_events`
const deadline = Date.now() + 60_000
while ((await count()).distinct < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
const delivered = (await count()).distinct
await onDb.end({ timeout: 1 })
for (const p of plane) await stop(p.target.child)
await stop(upstream.child)
await stop(receiver)
await stopAll()

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)] }
process.stdout.write('| export throughput | rows | seconds | events/s |\n|---|---|---|---|\n')
for (const r of results) process.stdout.write(`| ${r.label} | ${r.rows} | ${r.seconds.toFixed(2)} | ${Math.round(r.perSecond)} |\n`)
process.stdout.write('\n| data plane c=64, non-streamed | req/s per round | median req/s |\n|---|---|---|\n')
for (const p of plane) {
  const rps = p.runs.map((m) => m.rps ?? m.requestsPerSecond ?? NaN)
  process.stdout.write(`| export ${p.on ? 'on (CloudEvents)' : 'off'} | ${rps.map((x) => Math.round(x)).join(', ')} | ${Math.round(median(rps))} |\n`)
}
process.stdout.write(`\nexport-on sidecar: ${delivered} of ${n} rows delivered to the receiver after the run\n`)
