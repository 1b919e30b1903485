import type { TelemetryConfig } from '../config/config.js'
import { measure, type TelemetryRow } from './genai.js'
import type { MetricsPipeline, PipelineOptions } from './sdk.js'

// The OpenTelemetry sink: ledger rows, read by the export layer with this sink's own cursor, go
// into the SDK's instruments and out in one OTLP export per batch. Rows are acknowledged only when
// the receiver accepted the export that carried them; a failed export forgets what it held (see
// sdk.ts) and the rows come back as 'retry', so each row reaches the receiver in one successful
// export, unless an export arrived but its answer was lost (docs/telemetry.md says what that means).

export interface OtelSinkOptions {
  organizationId: string
  /** Rows per batch: a full batch goes out at once, a partial one waits for the export interval. */
  batchSize?: number
}

/**
 * The export layer's Sink contract (src/export/sink.ts), written out here so this room needs
 * nothing from the export room: the export room builds this sink among its others.
 */
export type RowResult = { status: 'ok' } | { status: 'retry', afterMs?: number, reason: string }
export interface OtelSink {
  readonly name: string
  readonly batchSize: number
  send: (rows: readonly TelemetryRow[], ctx: { signal: AbortSignal }) => Promise<RowResult[]>
  close: () => Promise<void>
}

export const OTEL_SINK_NAME = 'otel'
const DEFAULT_BATCH = 5000
const RECORD_SLICE = 250

export function createOtelSink (cfg: TelemetryConfig, opts: OtelSinkOptions): OtelSink {
  const batchSize = opts.batchSize ?? DEFAULT_BATCH
  let pipeline: Promise<MetricsPipeline> | null = null
  const pipelineOptions: PipelineOptions = { resource: { 'usage_proxy.organization.id': opts.organizationId } }
  const load = async (): Promise<MetricsPipeline> => (await import('./sdk.js')).loadPipeline(cfg, pipelineOptions)
  // When the last export started: OTEL_METRIC_EXPORT_INTERVAL is the pause between two exports
  // while the sink keeps up; a backlog (full batches) goes out without waiting.
  let lastExport = -Infinity

  const retryAll = (rows: readonly unknown[], reason: string): RowResult[] => rows.map(() => ({ status: 'retry', reason }))

  return {
    name: OTEL_SINK_NAME,
    batchSize,
    async send (rows, ctx) {
      if (rows.length === 0) return []
      if (rows.length < batchSize) await pause(lastExport + cfg.exportIntervalMs - Date.now(), ctx.signal)
      if (ctx.signal.aborted) return retryAll(rows, 'the exporter is stopping')
      let p: MetricsPipeline
      try {
        pipeline ??= load()
        p = await pipeline
      } catch (err) {
        pipeline = null
        return retryAll(rows, `the OpenTelemetry SDK did not load: ${message(err)}`)
      }
      lastExport = Date.now()
      // Recording runs on the data plane's event loop: a turn is given back every few hundred rows,
      // so a full batch never holds a request for long.
      for (let i = 0; i < rows.length; i++) {
        if (i > 0 && i % RECORD_SLICE === 0) await new Promise<void>((resolve) => setImmediate(resolve))
        p.record(measure(rows[i], cfg.server))
      }
      // Lost the lease while recording: the next holder sends these rows, so this process must not.
      if (ctx.signal.aborted) {
        await p.reset()
        return retryAll(rows, 'the exporter is stopping')
      }
      try {
        await p.export()
        return rows.map(() => ({ status: 'ok' }))
      } catch (err) {
        await p.reset()
        return retryAll(rows, `OTLP export failed: ${message(err)}`)
      }
    },
    async close () {
      const p = pipeline
      pipeline = null
      if (p) await (await p.catch(() => null))?.close()
    },
  }
}

function message (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** Waits `ms` (nothing when not positive), or less when the signal aborts. */
function pause (ms: number, signal: AbortSignal): Promise<void> {
  if (!(ms > 0) || signal.aborted) return Promise.resolve()
  return new Promise((resolve) => {
    const done = (): void => { clearTimeout(timer); signal.removeEventListener('abort', done); resolve() }
    const timer = setTimeout(done, ms)
    signal.addEventListener('abort', done, { once: true })
  })
}
