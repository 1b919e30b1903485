import type { ExportConfig } from '../config/config.js'
import type { Sql } from '../db/connect.js'
import { cloudEventsSink } from './cloudevents-sink.js'
import type { Sink } from './sink.js'
import { stripeSink } from './stripe-sink.js'
import { createOtelSink } from '../telemetry/otel-sink.js'

/** The sinks the configuration turns on, each off unless its variable is set. */
export function configuredSinks (cfg: ExportConfig, sql: Sql, organizationId: string, use: 'export' | 'replay' = 'export'): Sink[] {
  const sinks: Sink[] = []
  if (cfg.stripe) {
    sinks.push(stripeSink({ sql, organizationId, secretKey: cfg.stripe.secretKey, apiBase: cfg.stripe.apiBase, eventName: cfg.stripe.eventName, value: cfg.stripe.value, totals: use === 'replay' ? 'fresh' : 'stored' }))
  }
  if (cfg.cloudEvents) sinks.push(cloudEventsSink(cfg.cloudEvents))
  // The SDK itself loads with the sink's first batch, never when telemetry is off.
  if (cfg.otel) sinks.push(createOtelSink(cfg.otel, { organizationId }))
  return sinks
}
