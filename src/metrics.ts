import type { IncomingMessage, ServerResponse } from 'node:http'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { UsageRecord } from './usage/record.js'

// Prometheus metrics. The request path only bumps counters and observes two histograms once per
// exchange, after its last byte; queue depths are read when Prometheus scrapes, not maintained.
// Cost here is a float for dashboards only: billing reads usage_events, which is exact.

export interface MetricsSources {
  ledgerDepth: () => number
  journalBacklog: () => number
  reconcileActive: () => number
  reconciled: () => number
  reconcileGaveUp: () => number
  ledgerWritten: () => number
}

export interface Metrics {
  observe: (rec: UsageRecord) => void
  passthrough: (status: number) => void
  handler: (req: IncomingMessage, res: ServerResponse) => void
}

const seconds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

export function createMetrics (sources: () => MetricsSources | null): Metrics {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'usage_proxy_' })
  const requests = new Counter({ name: 'usage_proxy_requests_total', help: 'Requests by route and HTTP status', labelNames: ['route', 'status'], registers: [registry] })
  const outcomes = new Counter({ name: 'usage_proxy_outcomes_total', help: 'Metered exchanges by outcome', labelNames: ['outcome'], registers: [registry] })
  const latency = new Histogram({ name: 'usage_proxy_upstream_latency_seconds', help: 'Upstream dispatch to last byte', labelNames: ['endpoint', 'streamed'], buckets: seconds, registers: [registry] })
  const ttfb = new Histogram({ name: 'usage_proxy_upstream_ttfb_seconds', help: 'Upstream dispatch to response headers', labelNames: ['endpoint', 'streamed'], buckets: seconds, registers: [registry] })
  const tokens = new Counter({ name: 'usage_proxy_tokens_total', help: 'Tokens by model and kind', labelNames: ['model', 'kind'], registers: [registry] })
  const cost = new Counter({ name: 'usage_proxy_cost_usd_total', help: 'Cost by model in USD (approximate, for dashboards; billing reads usage_events)', labelNames: ['model'], registers: [registry] })
  const gauge = (name: string, help: string, read: (s: MetricsSources) => number) => new Gauge({
    name, help, registers: [registry],
    collect () { const s = sources(); this.set(s ? read(s) : 0) },
  })
  gauge('usage_proxy_ledger_queue_depth', 'Records waiting to be inserted', (s) => s.ledgerDepth())
  gauge('usage_proxy_journal_backlog', 'Records in the local journal not yet committed', (s) => s.journalBacklog())
  gauge('usage_proxy_reconciliations_active', 'Generations being looked up on /generation', (s) => s.reconcileActive())
  gauge('usage_proxy_reconciled', 'Generations reconciled through /generation since start', (s) => s.reconciled())
  gauge('usage_proxy_reconcile_gave_up', 'Generations written without usage after the lookup window since start', (s) => s.reconcileGaveUp())
  gauge('usage_proxy_ledger_written', 'Rows inserted since start', (s) => s.ledgerWritten())

  return {
    observe (rec) {
      const streamed = rec.streamed ? 'true' : 'false'
      requests.inc({ route: rec.endpoint, status: String(rec.status) })
      outcomes.inc({ outcome: rec.outcome })
      if (rec.latencyMs !== null) latency.observe({ endpoint: rec.endpoint, streamed }, rec.latencyMs / 1000)
      if (rec.ttfbMs !== null) ttfb.observe({ endpoint: rec.endpoint, streamed }, rec.ttfbMs / 1000)
      const model = rec.servedModel ?? rec.model ?? 'unknown'
      if (rec.promptTokens) tokens.inc({ model, kind: 'prompt' }, rec.promptTokens)
      if (rec.completionTokens) tokens.inc({ model, kind: 'completion' }, rec.completionTokens)
      if (rec.costUsd !== null) cost.inc({ model }, Number(rec.costUsd))
    },
    passthrough (status) { requests.inc({ route: 'passthrough', status: String(status) }) },
    handler (_req, res) {
      registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': registry.contentType })
        res.end(text)
      }, (err: Error) => {
        res.writeHead(500, { 'content-type': 'text/plain' })
        res.end(err.message)
      })
    },
  }
}
