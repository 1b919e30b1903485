import t from 'tap'
import { existsSync, mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, withoutServer } from './support/db.js'
import { TEST_KEY } from './support/test-key.js'
import { ROOT, freePort, runNodeAsync, spawnSidecar, type Child } from './support/child.js'
import { runLoad } from './support/load.js'
import { OtlpReceiver, total } from './support/otlp-receiver.js'

// OpenTelemetry fed from the ledger through the export layer, in real sidecar processes: two
// replicas of one organization write rows, the one holding the otel sink's lease exports them,
// the receiver goes down and comes back, the holder stops and the other takes over. The token
// sums the receiver shows equal the ledger's, each row counted once. Without an endpoint the SDK
// is never loaded, traffic or not.

const PROBE = join(ROOT, 'test', 'support', 'otel-load-probe.mjs')

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(23).start() })
t.teardown(async () => { await fake.close() })

function env (o: { org: string, databaseUrl: string }, extra: Record<string, string> = {}): Record<string, string> {
  return {
    OPENROUTER_API_KEY: TEST_KEY,
    OPENROUTER_EXTERNAL_USER: o.org,
    ORGANIZATION_NAME: o.org,
    DATABASE_URL: o.databaseUrl,
    OPENROUTER_BASE_URL: fake.baseUrl,
    MARKUP_PERCENT: '10',
    LOG_LEVEL: 'info',
    LEDGER_FLUSH_MS: '5',
    RECONCILE_MAX_WAIT_MS: '5000',
    DATA_DIR: mkdtempSync(join(tmpdir(), 'otel-replica-')),
    EXPORT_POLL_MS: '50',
    // Long enough that a starved machine never lets the lease lapse mid-batch (a new holder would
    // then send a batch the old one delivered but could not acknowledge: counted twice, as
    // docs/telemetry.md says); a stopping holder releases it at once.
    EXPORT_LEASE_MS: '10000',
    EXPORT_RETRY_MAX_MS: '400',
    ...extra,
  }
}

/** Waits until the ledger holds `n` rows of the organization (rows land off the request path). */
async function ledgerRows (sql: import('postgres').Sql<{}>, org: string, n: number): Promise<number> {
  const deadline = Date.now() + 30_000
  for (;;) {
    const [{ c }] = await sql<Array<{ c: number }>>`select count(*)::int as c from usage_events where organization_id = ${org}`
    if (c >= n || Date.now() > deadline) return c
    await new Promise((r) => setTimeout(r, 25))
  }
}

t.test('two replicas, one OTLP receiver: the ledger\'s token sums, each row once, through an outage and a handover', async (t) => {
  if (await withoutServer(t, 'two replicas share the sink\'s lease')) return
  const db = await createTestDb({ migrated: true }) // about the export, not the migrations
  t.teardown(() => db.drop())
  const receiver = await new OtlpReceiver().start()
  t.teardown(() => receiver.close())
  const org = 'mai_client_otel_e2e'
  const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_METRIC_EXPORT_INTERVAL: '100', OTEL_EXPORTER_OTLP_TIMEOUT: '5000', OTEL_SERVICE_NAME: 'usage-proxy-e2e' }
  const replicas: Child[] = []
  // The replicas run without the load probe: that the SDK loads here is shown by what the receiver
  // accepts, and the probe's import hook has no business in the processes under test.
  for (let i = 0; i < 2; i++) replicas.push(spawnSidecar(env({ org, databaseUrl: db.url }, otel), await freePort()))
  t.teardown(async () => { for (const r of replicas) { r.proc.kill('SIGKILL'); await r.exited } })
  await Promise.all(replicas.map((r) => r.waitReady()))

  const load = (r: Child, total: number, user: string) => runLoad({ url: () => r.url, total, concurrency: 4, headers: { 'x-openwebui-user-id': user } })
  const generations = () => total(receiver.accepted, 'usage_proxy.generations')
  // What each replica said of the export and the SDK: the failure message of a wait in vain.
  const exportLines = () => replicas.map((r, i) => `\nreplica ${i}:\n` + r.logs().filter((l) => /export|otel|OpenTelemetry|lease/i.test(JSON.stringify(l)))
    .slice(-25).map((l) => JSON.stringify(l).slice(0, 400)).join('\n')).join('')
  const exported = (n: number) => receiver.until(() => generations() >= n, 60_000, () => `, ${generations()} generations of ${n}${exportLines()}`)

  // 1. Both replicas serve; the lease holder exports every row, whoever wrote it.
  await Promise.all([load(replicas[0], 30, 'ann'), load(replicas[1], 30, 'bob')])
  t.equal(await ledgerRows(db.sql, org, 60), 60)
  await exported(60)

  // 2. The receiver is down while rows keep coming: nothing is acknowledged, nothing lost.
  await receiver.down()
  await Promise.all([load(replicas[0], 20, 'ann'), load(replicas[1], 20, 'chen')])
  t.equal(await ledgerRows(db.sql, org, 100), 100)
  const failedBatch = () => replicas.some((c) => c.logs().some((l) => String(l.msg).startsWith('export: receiver did not take rows') && l.sink === 'otel'))
  for (const deadline = Date.now() + 60_000; !failedBatch();) {
    if (Date.now() > deadline) throw new Error(`no replica said a batch failed while the receiver was down${exportLines()}`)
    await new Promise((r) => setTimeout(r, 25))
  }
  t.pass('the holder tried while the receiver was down, and was told to retry')
  await receiver.up()

  // 3. The lease holder stops (SIGTERM, a deploy); the other replica takes the sink over.
  const holderLine = (c: Child) => c.logs().some((l) => l.msg === 'export: holding the lease' && l.sink === 'otel')
  const holder = replicas.find(holderLine)
  t.ok(holder, 'one replica holds the otel sink\'s lease')
  const other = replicas.find((r) => r !== holder)!
  holder!.proc.kill('SIGTERM')
  t.equal((await holder!.exited).code, 0, 'the holder stopped cleanly')
  await load(other, 20, 'dan')
  t.equal(await ledgerRows(db.sql, org, 120), 120)
  await exported(120)
  t.ok(holderLine(other), 'the other replica took the lease over')

  const [sums] = await db.sql<Array<{ rows: number, input: number, output: number, timed: number }>>`
    select count(*)::int as rows, coalesce(sum(prompt_tokens), 0)::int as input, coalesce(sum(completion_tokens), 0)::int as output,
           count(latency_ms)::int as timed
    from usage_events where organization_id = ${org}`
  t.equal(generations(), sums.rows, 'every ledger row counted once')
  t.equal(total(receiver.accepted, 'gen_ai.client.token.usage', (p) => p.attributes['gen_ai.token.type'] === 'input'), sums.input, 'input tokens: the ledger\'s sum')
  t.equal(total(receiver.accepted, 'gen_ai.client.token.usage', (p) => p.attributes['gen_ai.token.type'] === 'output'), sums.output, 'output tokens: the ledger\'s sum')
  t.equal(total(receiver.accepted, 'gen_ai.client.operation.duration', () => true, 'count'), sums.timed, 'one duration per row that reached upstream')
  const instances = new Set(receiver.accepted.flatMap((r) => r.points.map((p) => p.resource['service.instance.id'])))
  t.ok(instances.size >= 2, 'both replicas exported in turn, each under its own service.instance.id')
  t.ok(receiver.accepted.every((r) => r.points.every((p) => p.resource['service.name'] === 'usage-proxy-e2e' && p.resource['usage_proxy.organization.id'] === org)))
})

t.test('the load probe names an @opentelemetry module a process imports (so its silence below means something)', async (t) => {
  const probe = join(mkdtempSync(join(tmpdir(), 'otel-probe-')), 'loaded.txt')
  const r = await runNodeAsync(['--import', PROBE, join(ROOT, 'test', 'fixtures', 'otel-import.mjs')], { OTEL_LOAD_PROBE_FILE: probe })
  t.equal(r.status, 0, r.stderr)
  t.match(readFileSync(probe, 'utf8'), /@opentelemetry\/sdk-metrics/, 'the SDK\'s import was named')
})

t.test('without an endpoint the SDK is never loaded, with traffic and the export layer running', async (t) => {
  const db = await createTestDb({ migrated: true }) // about the export, not the migrations
  t.teardown(() => db.drop())
  const org = 'mai_client_otel_off'
  const probe = join(mkdtempSync(join(tmpdir(), 'otel-probe-')), 'loaded.txt')
  // A CloudEvents sink keeps the export layer running, so the otel sink's absence is the only difference.
  const sidecar = spawnSidecar(env({ org, databaseUrl: db.url }, { CLOUDEVENTS_URL: 'http://127.0.0.1:9/events', OTEL_SERVICE_NAME: 'not-enough', OTEL_LOAD_PROBE_FILE: probe }), await freePort(), ['--import', PROBE])
  t.teardown(async () => { sidecar.proc.kill('SIGKILL'); await sidecar.exited })
  await sidecar.waitReady()
  const l = await runLoad({ url: () => sidecar.url, total: 6, concurrency: 2 })
  t.equal(l.ok, 6)
  t.equal(await ledgerRows(db.sql, org, 6), 6)
  t.ok(sidecar.logs().some((x) => x.msg === 'export started' && JSON.stringify(x.sinks) === '["cloudevents"]'), 'the export runs, without an otel sink')
  sidecar.proc.kill('SIGTERM')
  await sidecar.exited
  // @opentelemetry/api comes with prom-client (/metrics) whatever the configuration: a probe that
  // sees require() as well (Node 22.15 and later) names it; the SDK is what must stay out.
  const named = existsSync(probe) ? readFileSync(probe, 'utf8').split('\n').filter((m) => m !== '') : []
  t.same(named.filter((m) => m !== '@opentelemetry/api'), [], 'no module of the OpenTelemetry SDK was imported')
})
