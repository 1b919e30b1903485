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

export function createMetrics (sources: () => MetricsSources | null, register?: (registry: Registry) => void): Metrics {
  const registry = new Registry()
  register?.(registry) // metrics other modules own (budgets)
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

  // prom-client hashes a label object on every call; the label sets here are few, so each one's
  // child is looked up once and kept.
  const children = new Map<string, unknown>()
  const child = <T>(key: string, make: () => T): T => {
    let c = children.get(key) as T | undefined
    if (c === undefined) { c = make(); if (children.size < 10_000) children.set(key, c) }
    return c
  }

  return {
    observe (rec) {
      const streamed = rec.streamed ? 'true' : 'false'
      const ep = rec.endpoint
      child(`r|${ep}|${rec.status}`, () => requests.labels(ep, String(rec.status))).inc()
      child(`o|${rec.outcome}`, () => outcomes.labels(rec.outcome)).inc()
      if (rec.latencyMs !== null) child(`l|${ep}|${streamed}`, () => latency.labels(ep, streamed)).observe(rec.latencyMs / 1000)
      if (rec.ttfbMs !== null) child(`t|${ep}|${streamed}`, () => ttfb.labels(ep, streamed)).observe(rec.ttfbMs / 1000)
      const model = rec.servedModel ?? rec.model ?? 'unknown'
      if (rec.promptTokens) child(`p|${model}`, () => tokens.labels(model, 'prompt')).inc(rec.promptTokens)
      if (rec.completionTokens) child(`c|${model}`, () => tokens.labels(model, 'completion')).inc(rec.completionTokens)
      const usd = rec.costUsd === null ? NaN : Number(rec.costUsd)
      if (usd > 0) child(`$|${model}`, () => cost.labels(model)).inc(usd)
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
