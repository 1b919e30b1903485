import { createHmac } from 'node:crypto'
import { trimDecimal } from '../lib/decimal.js'
import { post } from './http.js'
import { exportId, type ExportRow, type RowResult, type SendContext, type Sink } from './sink.js'

// CloudEvents 1.0 over HTTP, batch mode: a JSON array of events, Content-Type
// application/cloudevents-batch+json, every row (refusals included: `outcome` says which). `id`
// is the row's stable id and `source` fixed, so a receiver that dedupes on (source, id), as
// OpenMeter does, sees each row once. With a secret, the body's HMAC-SHA256 (hex) travels in
// X-Usage-Proxy-Signature. docs/export.md maps the events onto OpenMeter and Lago.

export interface CloudEventsOptions {
  url: string
  secret?: string
  source: string
  batchSize: number
}

export const GENERATION_TYPE = 'com.usage-proxy.generation'

export interface GenerationEvent {
  specversion: '1.0'
  id: string
  source: string
  type: typeof GENERATION_TYPE
  subject: string
  time: string
  datacontenttype: 'application/json'
  data: Record<string, unknown>
}

const decimal = (v: string | null): string | null => v === null ? null : trimDecimal(v)

export function toCloudEvent (row: ExportRow, source: string): GenerationEvent {
  return {
    specversion: '1.0',
    id: exportId(row),
    source,
    type: GENERATION_TYPE,
    // The customer: the user when the row has one, else the organization.
    subject: row.userId ?? row.organizationId,
    time: row.createdAt,
    datacontenttype: 'application/json',
    data: {
      generation_id: row.generationId,
      event_id: row.eventId,
      organization_id: row.organizationId,
      user_id: row.userId,
      external_user_id: row.externalUserId,
      groups: row.groups,
      api_key_id: row.apiKeyId,
      model: row.model,
      requested_model: row.requestedModel,
      provider: row.provider,
      endpoint: row.endpoint,
      kind: row.kind,
      outcome: row.outcome,
      status: row.status,
      streamed: row.streamed,
      prompt_tokens: row.promptTokens === null ? null : String(row.promptTokens),
      completion_tokens: row.completionTokens === null ? null : String(row.completionTokens),
      total_tokens: row.totalTokens === null ? null : String(row.totalTokens),
      cached_tokens: row.cachedTokens === null ? null : String(row.cachedTokens),
      reasoning_tokens: row.reasoningTokens === null ? null : String(row.reasoningTokens),
      cost_usd: decimal(row.costUsd),
      billed_cost_usd: decimal(row.billedCostUsd),
      latency_ms: row.latencyMs,
    },
  }
}

export function signature (secret: string, body: string): string {
  return createHmac('sha256', secret).update(body).digest('hex')
}

export function cloudEventsSink (o: CloudEventsOptions): Sink {
  async function deliver (rows: readonly ExportRow[], ctx: SendContext): Promise<RowResult[]> {
    const body = JSON.stringify(rows.map((r) => toCloudEvent(r, o.source)))
    const headers: Record<string, string> = { 'content-type': 'application/cloudevents-batch+json' }
    if (o.secret) headers['x-usage-proxy-signature'] = signature(o.secret, body)
    const answer = await post(o.url, body, headers, ctx.signal)
    if (answer.kind === 'ok') return rows.map(() => ({ status: 'ok' }))
    if (answer.kind === 'retry') return rows.map(() => ({ status: 'retry', reason: answer.reason, afterMs: answer.afterMs }))
    // Refused: a batch says nothing of which event was at fault. Halves are sent apart until the
    // refused events stand alone; only those are set aside.
    if (rows.length === 1) return [{ status: 'rejected', reason: answer.reason }]
    const mid = Math.ceil(rows.length / 2)
    const first = await deliver(rows.slice(0, mid), ctx)
    if (first.some((r) => r.status === 'retry')) return [...first, ...rows.slice(mid).map((): RowResult => ({ status: 'retry', reason: 'waiting for the rows before' }))]
    return [...first, ...await deliver(rows.slice(mid), ctx)]
  }
  return { name: 'cloudevents', batchSize: o.batchSize, send: deliver }
}
