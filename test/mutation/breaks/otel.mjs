// Breaks of the OpenTelemetry sink (src/telemetry/, the OTEL_* configuration): `npm run mutate -- otel:`.
const SINK = 'test/otel-sink.test.ts'
const CONFIG = 'test/telemetry-config.test.ts'
const OFF = 'test/telemetry-off.test.ts'

export const BREAKS = [
  {
    name: 'otel: the sink module loads the SDK with the sidecar, endpoint or not',
    file: 'src/telemetry/otel-sink.ts',
    search: "import type { MetricsPipeline, PipelineOptions } from './sdk.js'\n",
    replace: "import type { MetricsPipeline, PipelineOptions } from './sdk.js'\nimport '@opentelemetry/sdk-metrics'\n",
    tests: ['test/otel-export.test.ts'],
  },
  {
    name: 'otel: a failed export keeps its state, so the retried rows count twice',
    file: 'src/telemetry/otel-sink.ts',
    search: '        await p.reset()\n',
    replace: '',
    tests: [SINK],
  },
  {
    name: 'otel: rows are acknowledged even when the export failed',
    file: 'src/telemetry/otel-sink.ts',
    search: "        return retryAll(rows, `OTLP export failed: ${message(err)}`)",
    replace: "        return rows.map(() => ({ status: 'ok' }))",
    tests: [SINK],
  },
  {
    name: 'otel: a receiver error answer counts as success',
    file: 'src/telemetry/sdk.ts',
    search: '      if (result.code !== EXPORT_SUCCESS) throw',
    replace: '      if (result.code === -1) throw',
    tests: [SINK],
  },
  {
    name: 'otel: input and output tokens swapped',
    file: 'src/telemetry/genai.ts',
    search: "tokens.push({ type: 'input', value: row.promptTokens })",
    replace: "tokens.push({ type: 'output', value: row.promptTokens })",
    tests: [SINK, CONFIG],
  },
  {
    name: 'otel: duration in milliseconds, not seconds',
    file: 'src/telemetry/genai.ts',
    search: 'row.latencyMs / 1000',
    replace: 'row.latencyMs',
    tests: [SINK, CONFIG],
  },
  {
    name: 'otel: the requested model is reported as the response model',
    file: 'src/telemetry/genai.ts',
    search: "if (row.model !== null) attributes['gen_ai.response.model'] = row.model",
    replace: "if (requested !== null) attributes['gen_ai.response.model'] = requested",
    tests: [CONFIG],
  },
  {
    name: 'otel: a row is recorded twice into the instruments',
    file: 'src/telemetry/sdk.ts',
    search: '      live.generations.add(1, m.attributes)',
    replace: '      live.generations.add(2, m.attributes)',
    tests: [SINK],
  },
  {
    name: 'otel: a batch recorded after the lease was lost is exported anyway',
    file: 'src/telemetry/otel-sink.ts',
    search: '      if (ctx.signal.aborted) {\n        await p.reset()',
    replace: '      if (ctx.signal.aborted && false) {\n        await p.reset()',
    tests: [SINK],
  },
  {
    name: 'otel: the protocol is ignored (always JSON)',
    file: 'src/telemetry/sdk.ts',
    search: "cfg.protocol === 'http/protobuf' ? import('@opentelemetry/exporter-metrics-otlp-proto') : null",
    replace: 'null',
    tests: [SINK],
  },
  {
    name: 'otel: the base endpoint is used without /v1/metrics',
    file: 'src/config/config.ts',
    search: "base!.replace(/\\/+$/, '') + '/v1/metrics'",
    replace: 'base!',
    tests: [CONFIG, SINK],
  },
  {
    name: 'otel: on without an endpoint',
    file: 'src/config/config.ts',
    search: '(base === undefined && e.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT === undefined)',
    replace: 'false',
    tests: [CONFIG, OFF],
  },
  {
    name: 'otel: the SDK loaded with its module, not on demand',
    file: 'src/telemetry/sdk.ts',
    search: "import type { Histogram, Counter } from '@opentelemetry/api'",
    replace: "import type { Histogram, Counter } from '@opentelemetry/api'\nimport '@opentelemetry/sdk-metrics'",
    tests: [OFF],
  },
  {
    name: 'otel: header values not percent-decoded',
    file: 'src/config/config.ts',
    search: 'out[key] = decodeURIComponent(part.slice(eq + 1).trim())',
    replace: 'out[key] = part.slice(eq + 1).trim()',
    tests: [CONFIG, SINK],
  },
]
