import t from 'tap'
import { loadConfig, type TelemetryConfig } from '../src/config/config.js'
import type { ExportRow, Sink } from '../src/export/sink.js'
import { createOtelSink } from '../src/telemetry/otel-sink.js'
import { OtlpReceiver, total, type Point, type Received } from './support/otlp-receiver.js'

// The OpenTelemetry sink through the real SDK and its OTLP/HTTP exporters, against a local
// receiver that decodes what went over the wire (JSON, or protobuf by its own reader): the token
// sums it shows equal the rows' sums, each row counted once, whatever failed on the way.

const BASE_ENV = { OPENROUTER_API_KEY: 'sk-or-v1-test-key', OPENROUTER_EXTERNAL_USER: 'org_otel', ORGANIZATION_NAME: 'Otel Org' }

function telemetry (endpoint: string, extra: Record<string, string> = {}): TelemetryConfig {
  const cfg = loadConfig({ ...BASE_ENV, OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_METRIC_EXPORT_INTERVAL: '1', OTEL_EXPORTER_OTLP_TIMEOUT: '3000', ...extra }).export.otel
  if (!cfg) throw new Error('telemetry should be on')
  return cfg
}

let seq = 0
function row (over: Partial<ExportRow> = {}): ExportRow {
  seq++
  return {
    eventId: `00000000-0000-4000-8000-${String(seq).padStart(12, '0')}`,
    generationId: `gen-${seq}`,
    organizationId: 'org_otel',
    userId: 'alice',
    externalUserId: 'org_otel',
    groups: [],
    apiKeyId: null,
    endpoint: 'chat/completions',
    model: 'openai/gpt-4o-mini',
    requestedModel: 'openai/gpt-4o-mini',
    provider: 'OpenAI',
    kind: 'chat',
    outcome: 'ok',
    status: 200,
    streamed: true,
    promptTokens: 10 + (seq % 7) * 13,
    completionTokens: 3 + (seq % 5) * 11,
    totalTokens: null,
    cachedTokens: null,
    reasoningTokens: null,
    costUsd: '0.000123',
    billedCostUsd: '0.0001353',
    latencyMs: 250 + seq,
    createdAt: new Date().toISOString(),
    ...over,
  }
}

const sumOf = (rows: ExportRow[], f: (r: ExportRow) => number | null): number => rows.reduce((s, r) => s + (f(r) ?? 0), 0)
const tokens = (received: Received[], type: 'input' | 'output'): number => total(received, 'gen_ai.client.token.usage', (p) => p.attributes['gen_ai.token.type'] === type)
const ctx = () => ({ signal: new AbortController().signal })

for (const protocol of ['http/protobuf', 'http/json'] as const) {
  t.test(`${protocol}: token sums, counts and the conventions' attributes reach the receiver`, async (t) => {
    const receiver = await new OtlpReceiver().start()
    t.teardown(() => receiver.close())
    const sink = createOtelSink(telemetry(receiver.url, { OTEL_EXPORTER_OTLP_PROTOCOL: protocol, OTEL_SERVICE_NAME: 'proxy-a', OTEL_EXPORTER_OTLP_HEADERS: 'x-api-key=s%3Dcret' }),
      { organizationId: 'org_otel' })
    t.teardown(() => sink.close())
    const rows = [row(), row(), row({ model: 'anthropic/claude-sonnet-4', requestedModel: 'anthropic/claude-sonnet-4', provider: 'Anthropic' }),
      row({ outcome: 'upstream_error', status: 503, promptTokens: null, completionTokens: null, costUsd: null, billedCostUsd: null, generationId: null }),
      row({ outcome: 'budget_exceeded', status: 402, promptTokens: null, completionTokens: null, costUsd: null, billedCostUsd: null, latencyMs: null, generationId: null })]
    const asLayerSees: Sink = sink // the export layer's contract, checked by tsc
    const results = await asLayerSees.send(rows, ctx())
    t.same(results, rows.map(() => ({ status: 'ok' })), 'every row acknowledged')
    t.equal(receiver.accepted.length, 1, 'one export for the batch')
    const got = receiver.accepted[0]
    t.equal(got.contentType, protocol === 'http/json' ? 'application/json' : 'application/x-protobuf')
    t.equal(got.headers['x-api-key'], 's=cret', 'OTEL_EXPORTER_OTLP_HEADERS sent, percent-decoded')

    t.equal(tokens(receiver.accepted, 'input'), sumOf(rows, (r) => r.promptTokens), 'input tokens: the rows\' sum')
    t.equal(tokens(receiver.accepted, 'output'), sumOf(rows, (r) => r.completionTokens), 'output tokens: the rows\' sum')
    t.equal(total(receiver.accepted, 'gen_ai.client.token.usage', (p) => p.attributes['gen_ai.token.type'] === 'input', 'count'), 3, 'one input record per row with tokens')
    t.equal(total(receiver.accepted, 'usage_proxy.generations'), 5, 'every row counted once')
    t.equal(total(receiver.accepted, 'gen_ai.client.operation.duration', () => true, 'count'), 4, 'a duration for each row that reached upstream')
    t.ok(Math.abs(total(receiver.accepted, 'gen_ai.client.operation.duration') - sumOf(rows, (r) => r.latencyMs) / 1000) < 1e-9, 'durations in seconds')
    t.ok(Math.abs(total(receiver.accepted, 'usage_proxy.cost', (p) => p.attributes['usage_proxy.cost.type'] === 'billed') - 3 * 0.0001353) < 1e-12, 'billed cost, as a float')

    const usage = got.points.filter((p) => p.metric === 'gen_ai.client.token.usage')
    const claude = usage.find((p) => p.attributes['gen_ai.request.model'] === 'anthropic/claude-sonnet-4' && p.attributes['gen_ai.token.type'] === 'output') as Point
    t.match(claude, {
      unit: '{token}',
      kind: 'histogram',
      temporality: 2,
      attributes: {
        'gen_ai.operation.name': 'chat',
        'gen_ai.provider.name': 'openrouter',
        'gen_ai.response.model': 'anthropic/claude-sonnet-4',
        'server.address': 'openrouter.ai',
        'server.port': 443,
        'usage_proxy.upstream_provider': 'Anthropic',
      },
      resource: { 'service.name': 'proxy-a', 'usage_proxy.organization.id': 'org_otel' },
    })
    t.equal(claude.explicitBounds[0], 1, 'the conventions\' token buckets')
    t.equal(claude.explicitBounds.at(-1), 67108864)
    const failed = got.points.find((p) => p.metric === 'gen_ai.client.operation.duration' && p.attributes['usage_proxy.outcome'] === 'upstream_error') as Point
    t.equal(failed.attributes['error.type'], '503', 'error.type: the upstream status')
    t.equal(failed.unit, 's')
    t.notOk(usage.some((p) => 'error.type' in p.attributes && p.attributes['usage_proxy.outcome'] === 'ok'), 'no error.type on successful rows')
    const refused = got.points.find((p) => p.metric === 'usage_proxy.generations' && p.attributes['usage_proxy.outcome'] === 'budget_exceeded') as Point
    t.equal(refused.attributes['error.type'], 'budget_exceeded')
    t.ok(got.points.every((p) => !JSON.stringify(p.attributes).includes('alice')), 'no user ids in attributes (cardinality; the ledger has them)')
  })
}

for (const temporality of ['cumulative', 'delta'] as const) {
  t.test(`${temporality}: the receiver down, then up: every row counted once`, async (t) => {
    const receiver = await new OtlpReceiver().start()
    t.teardown(() => receiver.close())
    const sink = createOtelSink(telemetry(receiver.url, { OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: temporality }),
      { organizationId: 'org_otel' })
    t.teardown(() => sink.close())
    const first = [row(), row()]
    t.same((await sink.send(first, ctx())).map((r) => r.status), ['ok', 'ok'])

    await receiver.down()
    const second = [row(), row(), row()]
    const failed = await sink.send(second, ctx())
    t.same(failed.map((r) => r.status), ['retry', 'retry', 'retry'], 'not acknowledged while the receiver is down')
    t.match((failed[0] as { reason: string }).reason, /OTLP export failed/)

    await receiver.up()
    receiver.failWith(500) // a non-retryable answer: the batch is retried by the layer, not lost
    t.same((await sink.send(second, ctx())).map((r) => r.status), ['retry', 'retry', 'retry'], 'a 500 is not an acknowledgement')
    // The export layer sends the same rows again, then the next ones.
    t.same((await sink.send(second, ctx())).map((r) => r.status), ['ok', 'ok', 'ok'])
    const third = [row()]
    t.same((await sink.send(third, ctx())).map((r) => r.status), ['ok'])

    const all = [...first, ...second, ...third]
    t.equal(tokens(receiver.accepted, 'input'), sumOf(all, (r) => r.promptTokens), 'input tokens equal the rows\', none twice')
    t.equal(tokens(receiver.accepted, 'output'), sumOf(all, (r) => r.completionTokens), 'output tokens too')
    t.equal(total(receiver.accepted, 'usage_proxy.generations'), all.length)
    t.ok(receiver.accepted.every((r) => r.points.every((p) => p.temporality === (temporality === 'delta' ? 1 : 2))), `${temporality} points`)
  })
}

t.test('429 with Retry-After: retried inside the export when it fits OTEL_EXPORTER_OTLP_TIMEOUT, else handed back as retry', async (t) => {
  const receiver = await new OtlpReceiver().start()
  t.teardown(() => receiver.close())
  const sink = createOtelSink(telemetry(receiver.url, { OTEL_EXPORTER_OTLP_TIMEOUT: '20000' }), { organizationId: 'org_otel' })
  t.teardown(() => sink.close())
  receiver.retryAfter = '1'
  receiver.failWith(429)
  const rows = [row(), row()]
  t.same((await sink.send(rows, ctx())).map((r) => r.status), ['ok', 'ok'], 'acknowledged once the retry went through')
  t.equal(receiver.refused, 1)
  receiver.retryAfter = '3600'
  receiver.failWith(429)
  const later = [row()]
  t.same((await sink.send(later, ctx())).map((r) => r.status), ['retry'], 'a Retry-After past the timeout: the layer retries the rows')
  t.same((await sink.send(later, ctx())).map((r) => r.status), ['ok'])
  t.equal(tokens(receiver.accepted, 'input'), sumOf([...rows, ...later], (r) => r.promptTokens), 'each row once')
})

t.test('a partial batch waits for the export interval; stopping answers retry and sends nothing', async (t) => {
  const receiver = await new OtlpReceiver().start()
  t.teardown(() => receiver.close())
  const sink = createOtelSink(telemetry(receiver.url, { OTEL_METRIC_EXPORT_INTERVAL: '3600000' }), { organizationId: 'org_otel', batchSize: 3 })
  t.teardown(() => sink.close())
  t.same((await sink.send([row()], ctx())).map((r) => r.status), ['ok'], 'the first export goes at once')
  t.same((await sink.send([row(), row(), row()], ctx())).map((r) => r.status), ['ok', 'ok', 'ok'], 'a full batch (a backlog) does not wait')
  const stop = new AbortController()
  const waiting = sink.send([row()], { signal: stop.signal })
  stop.abort()
  t.same((await waiting).map((r) => r.status), ['retry'], 'a partial batch held for the interval answers retry when the exporter stops')
  t.equal(receiver.accepted.length, 2, 'and nothing more was sent')
  t.equal(total(receiver.accepted, 'usage_proxy.generations'), 4)
})

t.test('the lease lost while a batch is being recorded: nothing is sent, the rows come back, and count once when resent', async (t) => {
  const receiver = await new OtlpReceiver().start()
  t.teardown(() => receiver.close())
  const sink = createOtelSink(telemetry(receiver.url, { OTEL_METRIC_EXPORT_INTERVAL: '3600000' }), { organizationId: 'org_otel', batchSize: 600 })
  t.teardown(() => sink.close())
  const first = [row()]
  t.same((await sink.send(first, ctx())).map((r) => r.status), ['ok'])
  const batch = Array.from({ length: 600 }, () => row())
  const lost = new AbortController()
  const sending = sink.send(batch, { signal: lost.signal })
  // Recording gives the event loop a turn every few hundred rows; the lease is lost in the first one.
  setImmediate(() => lost.abort())
  const results = await sending
  t.ok(results.every((r) => r.status === 'retry'), 'every row of the batch is to be retried')
  t.equal(receiver.accepted.length, 1, 'nothing was exported after the lease was lost')
  t.same(new Set((await sink.send(batch, ctx())).map((r) => r.status)), new Set(['ok']), 'the next holder (here: the same sink) sends them')
  t.equal(total(receiver.accepted, 'usage_proxy.generations'), 601, 'each row once')
  t.equal(tokens(receiver.accepted, 'input'), sumOf([...first, ...batch], (r) => r.promptTokens))
})
