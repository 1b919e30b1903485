import { randomUUID } from 'node:crypto'
import type { Histogram, Counter } from '@opentelemetry/api'
import type { TelemetryConfig } from '../config/config.js'
import { DURATION_BUCKETS, METRIC, TOKEN_BUCKETS, type Measurements } from './genai.js'

// The official OpenTelemetry JS SDK, loaded only here and only when telemetry is on: a sidecar
// without an OTLP endpoint never imports it (test/telemetry-off.test.ts checks both).
//
// Exports are ours to trigger, not a timer's: the sink records a batch of ledger rows, exports,
// and acknowledges the rows only when the receiver accepted that export. So the reader is an
// on-demand one, and a failed export throws the whole meter provider away: its state held rows
// that will be retried, and keeping them would count them twice once they are recorded again.

export interface MetricsPipeline {
  /** Adds one row's measurements to the instruments, in memory. */
  record: (m: Measurements) => void
  /** Collects what was recorded and sends it; resolves when the receiver answered 2xx, rejects otherwise. */
  export: () => Promise<void>
  /** Forgets every measurement: a new provider, so a new stream (new start time) for cumulative receivers. */
  reset: () => Promise<void>
  close: () => Promise<void>
}

/** ExportResultCode.SUCCESS of @opentelemetry/core, which the exporters answer with. */
const EXPORT_SUCCESS = 0

export interface PipelineOptions {
  /** Resource attributes of our own (the organization), besides OTEL_RESOURCE_ATTRIBUTES. */
  resource: Record<string, string>
}

export async function loadPipeline (cfg: TelemetryConfig, opts: PipelineOptions): Promise<MetricsPipeline> {
  const [metrics, resources, http, proto] = await Promise.all([
    import('@opentelemetry/sdk-metrics'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/exporter-metrics-otlp-http'),
    cfg.protocol === 'http/protobuf' ? import('@opentelemetry/exporter-metrics-otlp-proto') : null,
  ])
  const preference = {
    cumulative: http.AggregationTemporalityPreference.CUMULATIVE,
    delta: http.AggregationTemporalityPreference.DELTA,
    lowmemory: http.AggregationTemporalityPreference.LOWMEMORY,
  }[cfg.temporality]
  const exporterConfig = { url: cfg.metricsUrl, headers: cfg.headers, temporalityPreference: preference, timeoutMillis: cfg.timeoutMs }
  const exporter = proto ? new proto.OTLPMetricExporter(exporterConfig) : new http.OTLPMetricExporter(exporterConfig)

  // service.instance.id tells this process's stream from another replica's, and from its own
  // after a restart: a cumulative receiver must never add two processes' totals into one series.
  const resource = resources.resourceFromAttributes({
    ...cfg.resourceAttributes,
    ...opts.resource,
    'service.name': cfg.serviceName,
    'service.instance.id': randomUUID(),
  })

  class OnDemandReader extends metrics.MetricReader {
    protected async onShutdown (): Promise<void> {}
    protected async onForceFlush (): Promise<void> {}
  }

  interface Instruments { provider: InstanceType<typeof metrics.MeterProvider>, reader: OnDemandReader, tokens: Histogram, duration: Histogram, cost: Counter, generations: Counter }
  const build = (): Instruments => {
    const reader = new OnDemandReader({
      aggregationSelector: exporter.selectAggregation?.bind(exporter),
      aggregationTemporalitySelector: exporter.selectAggregationTemporality?.bind(exporter),
    })
    const provider = new metrics.MeterProvider({ resource, readers: [reader] })
    const meter = provider.getMeter('usage-proxy')
    return {
      provider,
      reader,
      tokens: meter.createHistogram(METRIC.tokenUsage, { unit: '{token}', description: 'Number of input and output tokens used.', advice: { explicitBucketBoundaries: TOKEN_BUCKETS } }),
      duration: meter.createHistogram(METRIC.operationDuration, { unit: 's', description: 'GenAI operation duration.', advice: { explicitBucketBoundaries: DURATION_BUCKETS } }),
      cost: meter.createCounter(METRIC.cost, { unit: '{USD}', description: 'usage-proxy: cost in USD by usage_proxy.cost.type (openrouter: what OpenRouter charged; billed: with the markup). A float, for dashboards; the ledger holds the exact amount.' }),
      generations: meter.createCounter(METRIC.generations, { unit: '{generation}', description: 'usage-proxy: ledger rows, by outcome.' }),
    }
  }
  let live = build()

  return {
    record (m) {
      live.generations.add(1, m.attributes)
      for (const t of m.tokens) live.tokens.record(t.value, { ...m.attributes, 'gen_ai.token.type': t.type })
      if (m.durationS !== null) live.duration.record(m.durationS, m.attributes)
      for (const c of m.costs) live.cost.add(c.usd, { ...m.attributes, 'usage_proxy.cost.type': c.type })
    },
    async export () {
      const { resourceMetrics, errors } = await live.reader.collect()
      if (errors.length > 0) throw new Error(`metrics collection failed: ${String(errors[0])}`)
      if (resourceMetrics.scopeMetrics.length === 0) return
      const result = await new Promise<{ code: number, error?: Error }>((resolve) => exporter.export(resourceMetrics, resolve))
      if (result.code !== EXPORT_SUCCESS) throw result.error ?? new Error('OTLP export failed')
    },
    async reset () {
      const old = live
      live = build()
      await old.provider.shutdown().catch(() => {})
    },
    async close () {
      await live.provider.shutdown().catch(() => {})
      await exporter.shutdown().catch(() => {})
    },
  }
}
