import type { IncomingMessage, ServerResponse } from 'node:http'
import { createHash, timingSafeEqual } from 'node:crypto'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { isRefusal, type UsageRecord } from '../usage/ledger/record.js'
import type { KeyBalance } from './openrouter-key.js'
import type { Backlog } from '../usage/ledger/ledger.js'
import type { DbReadings } from './db-readings.js'
import { sendError } from '../lib/errors.js'

// Prometheus metrics. The request path only bumps counters and observes two histograms once per
// exchange, after its last byte; queue depths and totals kept elsewhere are read when Prometheus
// scrapes, not maintained here. Cost here is a float for dashboards only: billing reads
// usage_events, which is exact.

export interface MetricsSources {
  ledgerDepth: () => number
  journalBacklog: () => number
  reconcileActive: () => number
  reconciled: () => number
  reconcileGaveUp: () => number
  ledgerWritten: () => number
  ledgerRejected: () => number
  ledgerBacklog: () => Backlog
}

export interface MetricsOptions {
  /** METRICS_API_KEY: when set, a scrape needs `Authorization: Bearer <it>`. */
  apiKey?: string
  /** METRICS_MAX_MODELS: distinct `model` label values; later models count as `other`. */
  maxModels?: number
  /** What Postgres last answered in the background (src/db-readings.ts): read at a scrape, never awaited. */
  db?: Pick<DbReadings, 'latest' | 'refresh'>
  /**
   * The latest GET /key answer, polled in the background. Its gauges (the organization key's
   * limit, balance and usage) are shown only behind METRICS_API_KEY or on METRICS_PORT's own
   * listener: the closed /key and /credits routes protect the same numbers, and the data-plane
   * port is open to every user.
   */
  keyBalance?: () => KeyBalance | null
  /** METRICS_PORT: /metrics is served on its own listener, not on the data plane. */
  ownPort?: boolean
  /** OPENROUTER_EXTERNAL_USER: the `organization` label of the key gauges. */
  organizationId?: string
}

/** Where an answer came from, for the responses counter: a closed set, so labels stay bounded. */
export type RouteClass = 'metered' | 'passthrough' | 'probe' | 'admin' | 'other'

export interface Metrics {
  observe: (rec: UsageRecord) => void
  passthrough: (status: number) => void
  /** Counts every answer the server gave, whoever produced it. */
  response: (routeClass: RouteClass, status: number) => void
  handler: (req: IncomingMessage, res: ServerResponse) => void
}

const seconds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

/**
 * Caps the values of the `model` label: each model seen gets its own series until `max` are
 * taken, then the rest share `other`. A client sending 20,000 invented model names makes 20,000
 * requests, not 20,000 series. Deployments use a handful of models, which get the slots first.
 */
export class ModelLabels {
  private readonly taken = new Set<string>()
  constructor (private readonly max: number) {}
  label (model: string): string {
    if (this.taken.has(model)) return model
    if (this.taken.size < this.max) { this.taken.add(model); return model }
    return 'other'
  }
}

export function createMetrics (sources: () => MetricsSources | null, opts: MetricsOptions = {}, register?: (registry: Registry) => void): Metrics {
  const registry = new Registry()
  register?.(registry) // metrics other modules own (budgets)
  // Unprefixed, as stock Node.js dashboards expect (process_cpu_seconds_total, nodejs_heap_...).
  collectDefaultMetrics({ register: registry })
  const requests = new Counter({ name: 'usage_proxy_requests_total', help: 'Requests by route and HTTP status', labelNames: ['route', 'status'], registers: [registry] })
  const responses = new Counter({ name: 'usage_proxy_http_responses_total', help: 'Every answer, the sidecar\'s own errors included, by route class and HTTP status', labelNames: ['route_class', 'status'], registers: [registry] })
  const outcomes = new Counter({ name: 'usage_proxy_outcomes_total', help: 'Metered exchanges by outcome', labelNames: ['outcome'], registers: [registry] })
  const latency = new Histogram({ name: 'usage_proxy_upstream_latency_seconds', help: 'Upstream dispatch to last byte', labelNames: ['endpoint', 'streamed'], buckets: seconds, registers: [registry] })
  const ttfb = new Histogram({ name: 'usage_proxy_upstream_ttfb_seconds', help: 'Upstream dispatch to response headers', labelNames: ['endpoint', 'streamed'], buckets: seconds, registers: [registry] })
  // `type`, not `kind`: kind names a row's chat-or-task everywhere else.
  const tokens = new Counter({ name: 'usage_proxy_tokens_total', help: 'Tokens by model and type (prompt, completion)', labelNames: ['model', 'type'], registers: [registry] })
  const cost = new Counter({ name: 'usage_proxy_cost_usd_total', help: 'Cost by model in USD (approximate, for dashboards; billing reads usage_events)', labelNames: ['model'], registers: [registry] })
  const gauge = (name: string, help: string, read: (s: MetricsSources) => number) => new Gauge({
    name, help, registers: [registry],
    collect () { const s = sources(); this.set(s ? read(s) : 0) },
  })
  // Totals kept by the ledger and the reconciler: exported as counters (monotonic since start).
  const total = (name: string, help: string, read: (s: MetricsSources) => number) => new Counter({
    name, help, registers: [registry],
    collect () { const s = sources(); this.reset(); this.inc(s ? read(s) : 0) },
  })
  gauge('usage_proxy_ledger_queue_depth', 'Records waiting to be inserted', (s) => s.ledgerDepth())
  gauge('usage_proxy_ledger_backlog_records', 'Records accepted and not yet committed to Postgres (memory and journal)', (s) => s.ledgerBacklog().records)
  gauge('usage_proxy_ledger_backlog_oldest_seconds', 'How long the oldest record not yet committed has waited; 0 when none waits', (s) => s.ledgerBacklog().oldestSeconds)
  gauge('usage_proxy_ledger_stalled_seconds', 'How long records have waited with no commit at all; 0 while the ledger commits', (s) => s.ledgerBacklog().stalledSeconds)
  gauge('usage_proxy_journal_backlog', 'Records in the local journal not yet committed', (s) => s.journalBacklog())
  gauge('usage_proxy_reconciliations_active', 'Generations being looked up on /generation', (s) => s.reconcileActive())
  total('usage_proxy_reconciled_total', 'Generations reconciled through /generation since start', (s) => s.reconciled())
  total('usage_proxy_reconcile_gave_up_total', 'Generations written without usage after the lookup window since start', (s) => s.reconcileGaveUp())
  total('usage_proxy_ledger_written_total', 'Rows inserted since start', (s) => s.ledgerWritten())
  total('usage_proxy_ledger_rejected_total', 'Rows Postgres refused as data, set aside in rejected.jsonl, since start', (s) => s.ledgerRejected())
  new Gauge({
    name: 'usage_proxy_postgres_up', help: '1 when Postgres answered the last background probe (every 5 s, 2 s deadline), else 0', registers: [registry],
    collect () { this.set(opts.db?.latest().postgresUp === true ? 1 : 0) },
  })
  new Gauge({
    name: 'usage_proxy_postgres_last_answer_age_seconds', help: 'Seconds since Postgres last answered a probe (absent until it first does)', registers: [registry],
    collect () {
      const at = opts.db?.latest().lastAnswerAt ?? null
      this.reset()
      if (at !== null) this.set((Date.now() - at) / 1000)
    },
  })
  const organization = opts.organizationId ?? 'unknown'
  const keyGauge = (name: string, help: string, read: (k: KeyBalance) => number | null) => new Gauge({
    name, help, labelNames: ['organization'], registers: [registry],
    collect () {
      const v = opts.keyBalance?.()
      const n = v ? read(v) : null
      this.reset() // unknown or unlimited: no sample rather than a false 0
      if (n !== null) this.set({ organization }, n)
    },
  })
  if (keyGaugesShown(opts)) {
    keyGauge('usage_proxy_openrouter_key_limit_remaining_usd', 'Credit left on the organization\'s OpenRouter key (GET /key limit_remaining; absent when the key has no limit)', (k) => k.limitRemaining)
    keyGauge('usage_proxy_openrouter_key_limit_usd', 'Credit limit of the organization\'s OpenRouter key (GET /key limit)', (k) => k.limit)
    keyGauge('usage_proxy_openrouter_key_usage_usd', 'Credits used by the organization\'s OpenRouter key, all time (GET /key usage)', (k) => k.usage)
  }

  // prom-client hashes a label object on every call; the label sets here are few, so each one's
  // child is looked up once and kept.
  const children = new Map<string, unknown>()
  const child = <T>(key: string, make: () => T): T => {
    let c = children.get(key) as T | undefined
    if (c === undefined) { c = make(); if (children.size < 10_000) children.set(key, c) }
    return c
  }
  const models = new ModelLabels(opts.maxModels ?? 50)
  const keyDigest = opts.apiKey ? digest(`Bearer ${opts.apiKey}`) : null

  return {
    observe (rec) {
      const streamed = rec.streamed ? 'true' : 'false'
      const ep = rec.endpoint
      child(`r|${ep}|${rec.status}`, () => requests.labels(ep, String(rec.status))).inc()
      child(`o|${rec.outcome}`, () => outcomes.labels(rec.outcome)).inc()
      // A refusal (402, 429) never went upstream: it has no upstream latency to show.
      if (rec.latencyMs !== null && !isRefusal(rec.outcome)) child(`l|${ep}|${streamed}`, () => latency.labels(ep, streamed)).observe(rec.latencyMs / 1000)
      if (rec.ttfbMs !== null) child(`t|${ep}|${streamed}`, () => ttfb.labels(ep, streamed)).observe(rec.ttfbMs / 1000)
      const model = models.label(rec.servedModel ?? rec.model ?? 'unknown')
      if (rec.promptTokens) child(`p|${model}`, () => tokens.labels(model, 'prompt')).inc(rec.promptTokens)
      if (rec.completionTokens) child(`c|${model}`, () => tokens.labels(model, 'completion')).inc(rec.completionTokens)
      const usd = rec.costUsd === null ? NaN : Number(rec.costUsd)
      if (usd > 0) child(`$|${model}`, () => cost.labels(model)).inc(usd)
    },
    passthrough (status) { requests.inc({ route: 'passthrough', status: String(status) }) },
    response (routeClass, status) {
      child(`h|${routeClass}|${status}`, () => responses.labels(routeClass, String(status))).inc()
    },
    handler (req, res) {
      const given = req.headers.authorization
      if (keyDigest && (typeof given !== 'string' || !timingSafeEqual(digest(given), keyDigest))) {
        sendError(res, 401, 'authentication_error', 'invalid_api_key', 'missing or wrong METRICS_API_KEY', { 'www-authenticate': 'Bearer' })
        return
      }
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

function digest (s: string): Buffer { return createHash('sha256').update(s).digest() }

/** Whether /metrics shows the organization key's gauges: only where not every user can scrape it. */
export function keyGaugesShown (o: Pick<MetricsOptions, 'apiKey' | 'ownPort' | 'keyBalance'>): boolean {
  return o.keyBalance !== undefined && ((o.apiKey !== undefined && o.apiKey !== '') || o.ownPort === true)
}
