// What one ledger row becomes in OpenTelemetry: the GenAI semantic conventions' client metrics
// (gen_ai.client.token.usage, gen_ai.client.operation.duration) with their attributes, and our own
// usage_proxy.* instruments for what the conventions do not define yet (cost, rows by outcome).
// Pure: no SDK here, so the mapping is tested without one and the SDK stays unloaded when off.

/** The fields of an exported ledger row that telemetry reads. */
export interface TelemetryRow {
  endpoint: string
  /** The model answered when known, else the model asked for. */
  model: string | null
  requestedModel: string | null
  /** OpenRouter's upstream provider (OpenAI, Anthropic, ...), when known. */
  provider: string | null
  kind: string
  outcome: string
  status: number
  promptTokens: number | null
  completionTokens: number | null
  /** Exact decimal text; a float only once it reaches a metric. */
  costUsd: string | null
  billedCostUsd: string | null
  latencyMs: number | null
}

export type Attributes = Record<string, string | number>

export const METRIC = {
  tokenUsage: 'gen_ai.client.token.usage',
  operationDuration: 'gen_ai.client.operation.duration',
  cost: 'usage_proxy.cost',
  generations: 'usage_proxy.generations',
} as const

/** The bucket boundaries the conventions advise for each histogram. */
export const TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
export const DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]

/**
 * gen_ai.provider.name: the provider the sidecar speaks to. OpenRouter is not among the
 * conventions' well-known values, which allow a custom one; the provider OpenRouter routed to
 * goes in usage_proxy.upstream_provider.
 */
export const PROVIDER_NAME = 'openrouter'

/** The OpenAI-style path (as the ledger keeps it) to the conventions' gen_ai.operation.name. */
export function operationName (endpoint: string): string {
  const path = endpoint.replace(/^\/+/, '').replace(/^v1\//, '')
  if (path === 'chat/completions' || path === 'responses' || path === 'messages') return 'chat'
  if (path === 'completions') return 'text_completion'
  if (path === 'embeddings') return 'embeddings'
  return path
}

/**
 * error.type for a row that did not end well: the upstream's HTTP status when it answered with
 * one (the conventions' example of a provider error code), else the outcome (upstream_timeout,
 * client_aborted, budget_exceeded, ...). Undefined for a successful row.
 */
export function errorType (row: Pick<TelemetryRow, 'outcome' | 'status'>): string | undefined {
  if (row.outcome === 'ok') return undefined
  if (row.outcome === 'upstream_error' && row.status >= 400) return String(row.status)
  return row.outcome
}

export interface Measurements {
  /** Attributes shared by every instrument for this row. */
  attributes: Attributes
  /** gen_ai.client.token.usage: one record per known token count. */
  tokens: Array<{ type: 'input' | 'output', value: number }>
  /** gen_ai.client.operation.duration in seconds; null for rows that never reached upstream. */
  durationS: number | null
  /** usage_proxy.cost, in USD (a float: for dashboards, the ledger has the exact figure). */
  costs: Array<{ type: 'openrouter' | 'billed', usd: number }>
}

export interface ServerAddress { address: string, port: number }

/** The measurements of one row. `server` is the upstream's host and port (OPENROUTER_BASE_URL). */
export function measure (row: TelemetryRow, server: ServerAddress | null): Measurements {
  const attributes: Attributes = {
    'gen_ai.operation.name': operationName(row.endpoint),
    'gen_ai.provider.name': PROVIDER_NAME,
    'usage_proxy.outcome': row.outcome,
    'usage_proxy.kind': row.kind,
  }
  const requested = row.requestedModel ?? row.model
  if (requested !== null) attributes['gen_ai.request.model'] = requested
  if (row.model !== null) attributes['gen_ai.response.model'] = row.model
  if (row.provider !== null) attributes['usage_proxy.upstream_provider'] = row.provider
  if (server !== null) {
    attributes['server.address'] = server.address
    attributes['server.port'] = server.port
  }
  const error = errorType(row)
  if (error !== undefined) attributes['error.type'] = error

  const tokens: Measurements['tokens'] = []
  if (row.promptTokens !== null) tokens.push({ type: 'input', value: row.promptTokens })
  if (row.completionTokens !== null) tokens.push({ type: 'output', value: row.completionTokens })
  const costs: Measurements['costs'] = []
  if (row.costUsd !== null) costs.push({ type: 'openrouter', usd: Number(row.costUsd) })
  if (row.billedCostUsd !== null) costs.push({ type: 'billed', usd: Number(row.billedCostUsd) })
  return { attributes, tokens, durationS: row.latencyMs === null ? null : row.latencyMs / 1000, costs }
}
