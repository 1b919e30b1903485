import { Counter, Gauge, type Registry } from 'prom-client'
import type { SinkReadings } from './exporter.js'

// The export's side of /metrics, per sink, read from this process's exporter at a scrape. Only
// the replica holding a sink's lease sends, so its `holding` is 1 and its counts move; the
// fleet's totals are in `usage-proxy export status` (Postgres).

export function registerExportMetrics (registry: Registry, readings: () => SinkReadings[]): void {
  const gauge = (name: string, help: string, read: (r: SinkReadings) => number): void => {
    new Gauge({
      name, help, labelNames: ['sink'], registers: [registry],
      collect () {
        this.reset()
        for (const r of readings()) this.set({ sink: r.sink }, read(r))
      },
    })
  }
  gauge('usage_proxy_export_lag_seconds', 'Age of the oldest ledger row this exporter read and has not delivered yet; 0 when caught up', (r) => r.lagSeconds)
  gauge('usage_proxy_export_holding_lease', '1 while this process holds the sink\'s export lease (one exporter per sink across replicas)', (r) => r.holding ? 1 : 0)
  const total = (name: string, help: string, read: (r: SinkReadings) => number): void => {
    new Counter({
      name, help, labelNames: ['sink'], registers: [registry],
      collect () {
        this.reset()
        for (const r of readings()) this.inc({ sink: r.sink }, read(r))
      },
    })
  }
  total('usage_proxy_export_rows_sent_total', 'Rows the receiver acknowledged, by this process, since start', (r) => r.sent)
  total('usage_proxy_export_rows_set_aside_total', 'Rows the receiver refused for good (set aside with a reason), by this process, since start', (r) => r.setAside)
  total('usage_proxy_export_failures_total', 'Batches that ended with rows to retry (receiver down, 429, 5xx), by this process, since start', (r) => r.failures)
}
