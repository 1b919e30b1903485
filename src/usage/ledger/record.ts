import { uuid7 } from '../../lib/uuid7.js'
import { pgText as text } from '../../lib/text.js'
import type { UserMapping } from '../../identity/directory.js'
import type { Usage } from '../tap/extract.js'
import { checkUsage } from '../tap/sanity.js'

// One row of usage_events, as it travels through the journal and the writer. Costs are decimal
// strings, timestamps ISO strings: the record survives a JSON round trip unchanged.

export type Outcome =
  | 'ok' // usage arrived inline
  | 'upstream_error' // OpenRouter answered 4xx/5xx before any content
  | 'stream_error' // an error event arrived mid-stream
  | 'client_aborted' // the client hung up; upstream was aborted too
  | 'incomplete' // the body ended without usage (broken stream, non-JSON body)
  | 'upstream_timeout' // OpenRouter went silent past the configured timeout
  | 'upstream_unreachable' // no HTTP answer at all
  | 'interrupted' // the sidecar itself stopped mid-request (found in the journal at boot)
  | 'budget_exceeded' // refused with 402 before dispatch: nothing reached OpenRouter
  | 'rate_limited' // refused with 429 (USER_RPM, USER_MAX_CONCURRENT) before dispatch: nothing reached OpenRouter

/** Answered by the sidecar's spend controls before dispatch: a row with no cost, no upstream latency. */
export function isRefusal (outcome: Outcome): boolean {
  return outcome === 'budget_exceeded' || outcome === 'rate_limited'
}

export type UsageSource = 'inline' | 'generation' | 'none'

/** The row: who, what and how it went, plus the normalized usage (tokens and exact costs). */
export interface UsageRecord extends Usage {
  eventId: string
  generationId: string | null
  organizationId: string
  userId: string | null
  externalUserId: string
  endpoint: string
  model: string | null
  servedModel: string | null
  provider: string | null
  streamed: boolean
  status: number
  outcome: Outcome
  finishReason: string | null
  errorMessage: string | null
  usageSource: UsageSource
  markupPercent: string
  latencyMs: number | null
  ttfbMs: number | null
  chatId: string | null
  /** `chat`, an Open WebUI background task name (title_generation, ...), or `api`. */
  kind: string
  /** Open WebUI's message id (X-OpenWebUI-Message-Id), when the app sends it. */
  messageId: string | null
  /**
   * The groups its user was in (sorted, duplicate-free; [] for none): the row counts in each of
   * these groups' reports, once in the organization's. newRecord sets it; journal lines of old
   * versions (and records built by hand) have none, read as [].
   */
  groups?: string[]
  /** The API key that authenticated the request; null for PROXY_API_KEY; absent on old journal lines. */
  apiKeyId?: string | null
  /** From /generation: OpenRouter stopped the generation (the client left). Null: not looked up. */
  cancelled?: boolean | null
  createdAt: string
  /**
   * The admission's estimate of the billed cost (markup included), exact decimal text; null when
   * no estimate was made (no budget to check). Travels in the journal's intent line; it reaches
   * the row (estimated_cost_usd) only on an interrupted request whose generation id was never
   * learned: see isEstimateOnly. Absent on journal lines of old versions.
   */
  estimatedCostUsd?: string | null
  /** What was off in upstream's numbers (left out of the row), or null. See sanity.ts. */
  anomaly?: string | null
  /**
   * The user's mapping (name, email, role) when it is new, changed or due a refresh: it travels
   * in the journaled record and is upserted in the same statement as the usage row, so it is
   * exactly as durable as the usage. Absent on most records and on journal lines of old versions.
   */
  mapping?: UserMapping | null
}

/** What is known when an exchange starts: who asks, for what. */
export type RecordStart = Pick<UsageRecord, 'organizationId' | 'userId' | 'externalUserId' | 'endpoint' | 'model' | 'streamed' | 'markupPercent' | 'chatId'> &
  Partial<UsageRecord>

/** A record for an exchange about to start: 'interrupted' with nothing known until it ends. */
export function newRecord (start: RecordStart): UsageRecord {
  return {
    eventId: uuid7(),
    generationId: null,
    servedModel: null,
    provider: null,
    status: 0,
    outcome: 'interrupted',
    finishReason: null,
    errorMessage: null,
    usageSource: 'none',
    promptTokens: null,
    completionTokens: null,
    totalTokens: null,
    cachedTokens: null,
    reasoningTokens: null,
    costUsd: null,
    upstreamCostUsd: null,
    isByok: null,
    latencyMs: null,
    ttfbMs: null,
    kind: 'api',
    messageId: null,
    groups: [],
    apiKeyId: null,
    cacheWriteTokens: null,
    audioTokens: null,
    cancelled: null,
    anomaly: null,
    estimatedCostUsd: null,
    createdAt: new Date().toISOString(),
    ...start,
  }
}

/** One user_mappings row as a record carries it; userId is already normalized (pgText). */

/** Adds usage from `source`; numbers that are not sane are left out and named in `anomaly`. */
export function withUsage (rec: UsageRecord, usage: Usage | null, source: UsageSource): UsageRecord {
  if (!usage) return rec
  const out = { ...rec }
  addUsage(out, usage, source)
  return out
}

/**
 * withUsage in place, for a record its exchange owns: field by field, so every finished record
 * keeps newRecord's shape (the ledger reads thousands of them a second; spreads made each one
 * a new hidden class).
 */
export function addUsage (rec: UsageRecord, usage: Usage | null, source: UsageSource): void {
  if (!usage) return
  const checked = checkUsage(usage)
  const u = checked.usage
  rec.promptTokens = u.promptTokens
  rec.completionTokens = u.completionTokens
  rec.totalTokens = u.totalTokens
  rec.cachedTokens = u.cachedTokens
  rec.reasoningTokens = u.reasoningTokens
  rec.costUsd = u.costUsd
  rec.upstreamCostUsd = u.upstreamCostUsd
  rec.isByok = u.isByok
  if (u.cacheWriteTokens !== undefined) rec.cacheWriteTokens = u.cacheWriteTokens
  if (u.audioTokens !== undefined) rec.audioTokens = u.audioTokens
  rec.usageSource = source
  rec.anomaly = checked.anomaly === null ? rec.anomaly ?? null : [rec.anomaly, `${source}: ${checked.anomaly}`].filter(Boolean).join('; ')
}

/**
 * The sidecar stopped mid-request before OpenRouter named the generation: nobody can look up what
 * it cost, so the row carries the admission's estimate instead (budgets count it at that amount;
 * billing sees no cost).
 */
export function isEstimateOnly (r: UsageRecord): boolean {
  return r.outcome === 'interrupted' && r.generationId === null && r.costUsd === null
}

/** error_message of a row made from an intent alone. */
export const UNNAMED_INTERRUPTION = 'usage-proxy stopped before OpenRouter named the generation: its cost is unknown; estimated_cost_usd holds the estimate budgets count'

/**
 * The row for an intent found at the next start with no later line: the request went (or was
 * about to go) upstream and nothing more is known. Its record as admitted, outcome 'interrupted'.
 */
export function fromIntent (r: UsageRecord): UsageRecord {
  return { ...r, outcome: 'interrupted', status: 0, usageSource: 'none', generationId: null, costUsd: null, errorMessage: UNNAMED_INTERRUPTION }
}

/** Column order of usage_events as the writer inserts it. */
export function toRow (r: UsageRecord): Record<string, unknown> {
  return {
    event_id: r.eventId,
    generation_id: text(r.generationId),
    organization_id: r.organizationId,
    user_id: text(r.userId),
    external_user_id: text(r.externalUserId),
    endpoint: text(r.endpoint),
    model: text(r.model),
    served_model: text(r.servedModel),
    provider: text(r.provider),
    streamed: r.streamed,
    status: r.status,
    outcome: r.outcome,
    finish_reason: text(r.finishReason),
    error_message: text(r.errorMessage),
    usage_source: r.usageSource,
    prompt_tokens: r.promptTokens,
    completion_tokens: r.completionTokens,
    total_tokens: r.totalTokens,
    cached_tokens: r.cachedTokens,
    reasoning_tokens: r.reasoningTokens,
    cost_usd: r.costUsd,
    upstream_cost_usd: r.upstreamCostUsd,
    is_byok: r.isByok,
    markup_percent: r.markupPercent,
    latency_ms: r.latencyMs,
    ttfb_ms: r.ttfbMs,
    chat_id: text(r.chatId),
    kind: text(r.kind) ?? 'api', // journal lines from before migration 003 have none
    message_id: text(r.messageId),
    anomaly: text(r.anomaly ?? null),
    cache_write_tokens: r.cacheWriteTokens ?? null,
    audio_tokens: r.audioTokens ?? null,
    cancelled: r.cancelled ?? null,
    estimated_cost_usd: isEstimateOnly(r) ? r.estimatedCostUsd ?? null : null,
    created_at: r.createdAt,
    groups: r.groups ?? [],
    api_key_id: text(r.apiKeyId ?? null),
  }
}

export const ROW_COLUMNS = Object.keys(toRow({} as UsageRecord))
