import t from 'tap'
import { ConfigError, loadConfig, parseOtlpHeaders } from '../src/config/config.js'
import { unknownVariables } from '../src/config/unknown-variables.js'
import { errorType, measure, operationName } from '../src/telemetry/genai.js'

// The standard OTEL_* variables as the sidecar reads them: off unless an OTLP endpoint is set,
// the OTLP rules for URLs, protocols and headers, and the GenAI mapping of a row.

const good = { OPENROUTER_API_KEY: 'sk-or-v1-abcdef123456', OPENROUTER_EXTERNAL_USER: 'mai_client_63a4eb6d', ORGANIZATION_NAME: 'Acme', DATABASE_URL: 'postgres://u@h/db' }

t.test('off unless OTEL_EXPORTER_OTLP_ENDPOINT (or the metrics one) is set; OTEL_SDK_DISABLED wins', async (t) => {
  t.equal(loadConfig(good).export.otel, null)
  t.equal(loadConfig({ ...good, OTEL_EXPORTER_OTLP_ENDPOINT: '' }).export.otel, null, 'empty means unset')
  t.equal(loadConfig({ ...good, OTEL_SERVICE_NAME: 'x', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }).export.otel, null, 'other OTEL_* alone do not turn it on')
  t.equal(loadConfig({ ...good, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }).export.otel, null)
  t.ok(loadConfig({ ...good, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://c:4318/v1/metrics' }).export.otel)
})

t.test('defaults and the OTLP URL rules', async (t) => {
  const c = loadConfig({ ...good, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' }).export.otel!
  t.same(c, {
    metricsUrl: 'http://collector:4318/v1/metrics',
    protocol: 'http/protobuf',
    headers: {},
    temporality: 'cumulative',
    timeoutMs: 10000,
    exportIntervalMs: 60000,
    serviceName: 'usage-proxy',
    resourceAttributes: {},
    server: { address: 'openrouter.ai', port: 443 },
  })
  const server = (base: string) => loadConfig({ ...good, OPENROUTER_BASE_URL: base, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }).export.otel!.server
  t.same(server('http://127.0.0.1:9000/v1'), { address: '127.0.0.1', port: 9000 }, 'server.address and server.port: the upstream\'s')
  t.same(server('http://fake/v1'), { address: 'fake', port: 80 })
  t.equal(loadConfig({ ...good, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/base' }).export.otel!.metricsUrl, 'http://collector:4318/base/v1/metrics', 'the signal path is appended to a base with a path')
  t.equal(loadConfig({ ...good, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318', OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://b:9/custom' }).export.otel!.metricsUrl, 'http://b:9/custom', 'the signal\'s own URL is used as is')
  const d = loadConfig({ ...good, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_METRIC_EXPORT_INTERVAL: '5000', OTEL_SERVICE_NAME: 'proxy-eu', OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: 'Delta', OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=prod,team=a%20b' }).export.otel!
  t.match(d, { protocol: 'http/json', exportIntervalMs: 5000, serviceName: 'proxy-eu', temporality: 'delta', resourceAttributes: { 'deployment.environment': 'prod', team: 'a b' } })
})

t.test('bad values are refused, naming the variable and never echoing a header value', async (t) => {
  const err = t.throws(() => loadConfig({ ...good, OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_METRIC_EXPORT_INTERVAL: '0', OTEL_EXPORTER_OTLP_HEADERS: 'authorization' + '=Bearer%zzsecret' })) as ConfigError
  const text = err.problems.join('\n')
  t.match(text, /^OTEL_EXPORTER_OTLP_ENDPOINT /m)
  t.match(text, /^OTEL_EXPORTER_OTLP_PROTOCOL grpc is not supported: use http\/protobuf or http\/json/m)
  t.match(text, /^OTEL_METRIC_EXPORT_INTERVAL /m)
  t.match(text, /^OTEL_EXPORTER_OTLP_HEADERS must be name=value pairs/m)
  t.notMatch(text, /zzsecret/, 'the header value is not repeated')
  t.throws(() => loadConfig({ ...good, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/xml' }), /OTEL_EXPORTER_OTLP_PROTOCOL/)
})

t.test('OTEL_EXPORTER_OTLP_HEADERS: comma-separated, percent-decoded', async (t) => {
  t.same(parseOtlpHeaders('api-key=abc%3D%3D, x-team = ops ,'), { 'api-key': 'abc==', 'x-team': 'ops' })
  t.same(parseOtlpHeaders(''), {})
  t.equal(parseOtlpHeaders('novalue'), null)
  t.equal(parseOtlpHeaders('=v'), null)
  t.equal(parseOtlpHeaders('k=%E0%A4%A'), null, 'a broken escape')
})

t.test('OTEL_* names the SDK reads itself are not reported as unknown', async (t) => {
  const env = { OTEL_EXPORTER_OTLP_COMPRESSION: 'gzip', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_LOG_LEVEL: 'debug', OTEL_SEMCONV_STABILITY_OPT_IN: 'gen_ai_latest_experimental' }
  t.same(unknownVariables(env), [])
})

t.test('the GenAI mapping of a row', async (t) => {
  t.equal(operationName('chat/completions'), 'chat')
  t.equal(operationName('/v1/chat/completions'), 'chat')
  t.equal(operationName('responses'), 'chat')
  t.equal(operationName('completions'), 'text_completion')
  t.equal(operationName('embeddings'), 'embeddings')
  t.equal(operationName('audio/speech'), 'audio/speech', 'others keep their path, as the conventions allow a custom value')
  t.equal(errorType({ outcome: 'ok', status: 200 }), undefined)
  t.equal(errorType({ outcome: 'upstream_error', status: 429 }), '429')
  t.equal(errorType({ outcome: 'upstream_timeout', status: 504 }), 'upstream_timeout')
  const m = measure({ endpoint: 'chat/completions', model: 'openai/gpt-4o-2024-08-06', requestedModel: 'openai/gpt-4o', provider: null, kind: 'title_generation', outcome: 'ok', status: 200, promptTokens: 0, completionTokens: null, costUsd: '0.5', billedCostUsd: null, latencyMs: 1500 }, null)
  t.same(m.attributes, { 'gen_ai.operation.name': 'chat', 'gen_ai.provider.name': 'openrouter', 'usage_proxy.outcome': 'ok', 'usage_proxy.kind': 'title_generation', 'gen_ai.request.model': 'openai/gpt-4o', 'gen_ai.response.model': 'openai/gpt-4o-2024-08-06' })
  t.same(m.tokens, [{ type: 'input', value: 0 }], 'a zero count is recorded, an unknown one is not')
  t.equal(m.durationS, 1.5)
  t.same(m.costs, [{ type: 'openrouter', usd: 0.5 }])
})
