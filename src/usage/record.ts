import { pgText as text } from '../db/text.js'
import type { Usage } from './extract.js'

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
  /** From /generation: OpenRouter stopped the generation (the client left). Null: not looked up. */
  cancelled?: boolean | null
  createdAt: string
}

export function withUsage (rec: UsageRecord, usage: Usage | null, source: UsageSource): UsageRecord {
  return usage ? { ...rec, ...usage, usageSource: source } : rec
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
    cache_write_tokens: r.cacheWriteTokens ?? null,
    audio_tokens: r.audioTokens ?? null,
    cancelled: r.cancelled ?? null,
    created_at: r.createdAt,
  }
}

export const ROW_COLUMNS = Object.keys(toRow({} as UsageRecord))
