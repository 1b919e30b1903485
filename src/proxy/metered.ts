import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { errors as undiciErrors, type Dispatcher } from 'undici'
import type { Logger } from '../log.js'
import type { Admission, Limits } from '../budgets/limits.js'
import { maxTokensOf } from '../budgets/estimate.js'
import { IdentityError, identify, type IdentityOptions } from '../identity/identify.js'
import type { UserDirectory } from '../identity/directory.js'
import type { Ledger } from '../usage/ledger.js'
import type { Reconciler } from '../usage/reconcile.js'
import { withUsage, type Outcome, type UsageRecord } from '../usage/record.js'
import { ResponseTap, bodyKind } from '../usage/response-tap.js'
import { classifyKind, messageIdOf, type KindOptions } from '../usage/kind.js'
import { sendError } from './errors.js'
import { upstreamHeaders } from './headers.js'
import type { SelfService } from './self-service.js'
import type { Upstream } from './upstream.js'

// THE HOT PATH. One metered request: read and rewrite the JSON body, dispatch it on the upstream
// pool, and hand every response chunk to the client first and to the tap second. The client never
// waits for anything but OpenRouter: the record goes to the ledger after the last byte.

/** Inference endpoints whose JSON body gets the user's external id. */
export const METERED = new Set(['chat/completions', 'completions', 'embeddings', 'responses', 'messages', 'rerank',
  'images/generations', 'audio/speech'])
/** Endpoints that take multipart uploads, forwarded as they are (a JSON body still gets the user). */
const METERED_UPLOADS = new Set(['audio/transcriptions', 'audio/translations', 'images/edits', 'images/variations'])

/**
 * Which POST paths are metered. Every other non-GET request is refused by the router, so
 * nothing billable goes out unmetered; a closed list also keeps metric labels bounded.
 */
export function meteredKind (endpoint: string): 'json' | 'raw' | null {
  if (METERED.has(endpoint)) return 'json'
  if (METERED_UPLOADS.has(endpoint)) return 'raw'
  return null
}

export interface MeterContext {
  upstream: Upstream
  apiKey: string
  appUrl: string | undefined
  appTitle: string
  organizationId: string
  markupPercent: string
  maxBodyBytes: number
  identity: IdentityOptions
  /** identityHeaders(identity), computed once. */
  identityHeaders: Set<string>
  directory: UserDirectory
  ledger: Ledger
  reconciler: Reconciler
  log: Logger
  /** Called when an exchange starts and ends: graceful shutdown waits for these. */
  track: (delta: 1 | -1) => void
  /** Optional observer (metrics); called once per finished exchange. */
  observe?: (rec: UsageRecord, res: ServerResponse) => void
  /** True once shutdown began: connections cut after the grace period are not client aborts. */
  stopping?: () => boolean
  /** Task and message-id header names (TASK_HEADER, MESSAGE_ID_HEADER) and the app's headers. */
  kinds?: KindOptions
  /** Spend controls (budgets, rate limits); absent until boot reached the database. */
  limits?: Limits
  /** The virtual "My usage" model, answered locally (SELF_SERVICE_MODEL). */
  selfService?: SelfService
}

const DROP_RESPONSE = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-connection'])

/** A stream whose client left before the generation was named is aborted once it is, or after this. */
const ABORT_WAIT_FOR_HEADERS_MS = 10_000

export function handleMetered (req: IncomingMessage, res: ServerResponse, endpoint: string, query: string, kind: 'json' | 'raw', ctx: MeterContext): void {
  const declared = Number(req.headers['content-length'])
  if (declared > ctx.maxBodyBytes) {
    sendError(res, 413, 'invalid_request_error', 'body_too_large', `request body exceeds ${ctx.maxBodyBytes} bytes`)
    req.resume()
    return
  }
  const parts: Buffer[] = []
  let size = 0
  let refused = false
  req.on('data', (chunk: Buffer) => {
    if (refused) return
    size += chunk.length
    if (size > ctx.maxBodyBytes) {
      refused = true
      sendError(res, 413, 'invalid_request_error', 'body_too_large', `request body exceeds ${ctx.maxBodyBytes} bytes`)
      return
    }
    parts.push(chunk)
  })
  req.on('end', () => { if (!refused) forward(req, res, endpoint, query, kind, Buffer.concat(parts, size), ctx) })
}

function forward (req: IncomingMessage, res: ServerResponse, endpoint: string, query: string, kind: 'json' | 'raw', raw: Buffer, ctx: MeterContext): void {
  // A multipart upload (audio transcription, image edit) goes as it came; JSON gets the user.
  const asJson = kind === 'json' || (req.headers['content-type'] ?? '').includes('json')
  let body: Record<string, unknown> = {}
  if (asJson) {
    try {
      const parsed: unknown = JSON.parse(raw.toString('utf8'))
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object')
      body = parsed as Record<string, unknown>
    } catch {
      sendError(res, 400, 'invalid_request_error', 'invalid_json', 'request body must be a JSON object')
      return
    }
  }
  let who
  try {
    who = identify(req.headers, body.user, ctx.identity)
  } catch (err) {
    if (err instanceof IdentityError) { sendError(res, 401, 'authentication_error', 'invalid_identity', err.message); return }
    throw err
  }
  const externalUserId = ctx.directory.externalIdFor(who)
  if (ctx.selfService?.matches(endpoint, body)) return ctx.selfService.answer(res, body, who, externalUserId)
  const streamed = body.stream === true
  let payload = raw
  if (asJson) {
    body.user = externalUserId
    if (streamed && (endpoint === 'chat/completions' || endpoint === 'completions')) {
      // Documented as a no-op on OpenRouter today (usage always comes); harmless and future-proof.
      const so = body.stream_options
      body.stream_options = so !== null && typeof so === 'object' ? { ...so, include_usage: true } : { include_usage: true }
    }
    payload = Buffer.from(JSON.stringify(body))
  }

  const headers = upstreamHeaders(req.headers, ctx, 'identity') // the tap must read plain bytes
  if (asJson) headers['content-type'] = 'application/json'

  const base: UsageRecord = {
    eventId: randomUUID(),
    generationId: null,
    organizationId: ctx.organizationId,
    userId: who.userId,
    externalUserId,
    endpoint,
    model: typeof body.model === 'string' ? body.model : null,
    servedModel: null,
    provider: null,
    streamed,
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
    markupPercent: ctx.markupPercent,
    latencyMs: null,
    ttfbMs: null,
    chatId: who.chatId,
    kind: classifyKind(req.headers, { streamed, messages: () => body.messages }, ctx.kinds),
    messageId: messageIdOf(req.headers, ctx.kinds),
    createdAt: new Date().toISOString(),
  }
  const go = (admission: Admission | null): void => {
    const exchange = new Exchange(res, base, ctx, admission)
    ctx.track(1)
    ctx.upstream.pool.dispatch({
      method: 'POST',
      path: `${ctx.upstream.basePath}/${endpoint}${query}`,
      headers,
      body: payload,
    }, exchange)
  }
  // Spend controls (src/budgets): a refused request is answered there and never dispatched.
  const admitting = ctx.limits?.admit(res, base, raw.length, maxTokensOf(body)) ?? null
  if (admitting === null) return go(null)
  admitting.then((a) => { if (a) go(a) }).catch((err: Error) => {
    ctx.log.error({ err: err.message }, 'admission failed')
    sendError(res, 500, 'api_error', 'internal_error', 'usage-proxy could not check spend limits')
  })
}

/**
 * undici's dispatch handler for one exchange: the tee lives in onData.
 *
 * When the client hangs up: a stream is aborted upstream (OpenRouter then stops generating and
 * billing where the provider allows), but only once its response headers name the generation,
 * so that what was billed can still be reconciled. A non-stream request is billed in full
 * whatever happens, so it is read to the end, unseen, for its inline usage.
 */
class Exchange implements Dispatcher.DispatchHandler {
  private readonly started = process.hrtime.bigint()
  private abortUpstream: ((err?: Error) => void) | null = null
  private tap: ResponseTap | null = null
  private status = 0
  private ttfbMs: number | null = null
  private clientGone = false
  private lengthDeclared = false
  private done = false
  private resume: (() => void) | null = null

  constructor (private readonly res: ServerResponse, private rec: UsageRecord, private readonly ctx: MeterContext, private readonly admission: Admission | null = null) {
    res.once('close', () => {
      if (this.done || res.writableFinished) return
      this.clientGone = true
      if (!this.rec.streamed) {
        // Upstream may be paused for a client that stopped reading; a closed socket never
        // drains, so resume it here or the exchange would hang forever.
        this.resume?.()
        return
      }
      if (this.rec.generationId) this.abort()
      // The generation is not named yet: abort when it is, or give up waiting for it.
      else setTimeout(() => { if (!this.done) this.abort() }, ABORT_WAIT_FOR_HEADERS_MS).unref()
    })
  }

  onConnect (abort: (err?: Error) => void): void {
    this.abortUpstream = abort
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void): boolean {
    if (statusCode < 200) return true
    this.status = statusCode
    this.ttfbMs = msSince(this.started)
    let contentType: string | undefined
    let generationId: string | undefined
    let contentEncoding: string | undefined
    const out: string[] = []
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = rawHeaders[i].toString('latin1')
      const lower = name.toLowerCase()
      if (DROP_RESPONSE.has(lower)) continue
      const value = rawHeaders[i + 1].toString('latin1')
      if (lower === 'content-type') contentType = value
      else if (lower === 'x-generation-id') generationId = value
      else if (lower === 'content-length') this.lengthDeclared = true
      else if (lower === 'content-encoding') contentEncoding = value
      out.push(name, value)
    }
    this.resume = resume
    this.tap = new ResponseTap(statusCode < 300 ? bodyKind(contentType) : 'json', (id) => this.sawGeneration(id), contentEncoding)
    if (generationId && statusCode < 300) this.sawGeneration(generationId)
    if (this.clientGone) return true // read on, unseen; sawGeneration aborts a stream once it is named
    this.res.writeHead(statusCode, out)
    this.res.on('drain', resume)
    return true
  }

  onData (chunk: Buffer): boolean {
    const more = this.clientGone || this.res.write(chunk)
    this.tap!.write(chunk)
    return more
  }

  onComplete (): void {
    // Journal first, then end: a client never holds a finished response whose record is not
    // on disk yet. The bytes, [DONE] included, are already out; this only closes the body.
    this.finish(null)
    if (!this.clientGone) this.res.end()
  }

  onError (err: Error): void {
    if (this.done) return
    this.finish(err)
    if (this.clientGone) return
    if (!this.res.headersSent) {
      if (isTimeout(err)) sendError(this.res, 504, 'upstream_error', 'upstream_timeout', 'OpenRouter did not answer in time')
      else sendError(this.res, 502, 'upstream_error', 'upstream_unreachable', 'OpenRouter could not be reached')
    } else if (this.lengthDeclared) {
      // A body with a declared length cannot end early without lying: cut the connection.
      this.res.destroy()
    } else {
      // Mid-stream: end the chunked response cleanly; the record says what happened.
      this.res.end()
    }
  }

  private abort (): void {
    this.abortUpstream?.(new Error('client closed the connection'))
  }

  private sawGeneration (id: string): void {
    if (this.rec.generationId) return
    this.rec.generationId = id
    if (this.clientGone && this.rec.streamed) { this.abort(); return } // named: now it can be reconciled
    // Journal it as pending once the read that revealed it is handled: a response that also
    // completed in that read (most non-stream answers) goes straight to its final line, saving
    // a write; any other is pending before the event loop turns, let alone before a crash could.
    queueMicrotask(() => { if (!this.done) this.ctx.ledger.pending(this.rec) })
  }

  private finish (err: Error | null): void {
    if (this.done) return
    this.done = true
    this.ctx.track(-1)
    this.admission?.done()
    const tap = this.tap?.end() ?? null
    let outcome: Outcome
    if (this.clientGone) outcome = this.ctx.stopping?.() ? 'interrupted' : 'client_aborted'
    else if (err && !this.tap) outcome = isTimeout(err) ? 'upstream_timeout' : 'upstream_unreachable'
    else if (this.status >= 400) outcome = 'upstream_error'
    else if (tap?.error) outcome = 'stream_error'
    else if (err) outcome = isTimeout(err) ? 'upstream_timeout' : 'incomplete'
    else if (!tap?.usage) outcome = 'incomplete'
    else outcome = 'ok'
    let rec: UsageRecord = {
      ...this.rec,
      generationId: this.rec.generationId ?? tap?.generationId ?? null,
      servedModel: tap?.servedModel ?? null,
      provider: tap?.provider ?? null,
      status: this.clientGone && !this.res.headersSent ? 499 : (this.status || (err ? (isTimeout(err) ? 504 : 502) : 0)),
      outcome,
      finishReason: tap?.finishReason ?? null,
      errorMessage: tap?.error?.message ?? (err && !this.clientGone ? err.message : null),
      latencyMs: msSince(this.started),
      ttfbMs: this.ttfbMs,
    }
    rec = withUsage(rec, tap?.usage ?? null, 'inline')
    // Usage missing but the generation known: ask OpenRouter what it charged. An upstream error
    // answered before any generation is recorded as is, with no invented cost.
    if (rec.usageSource === 'none' && rec.generationId && outcome !== 'upstream_error') {
      this.ctx.ledger.pending(rec)
      this.ctx.reconciler.enqueue(rec)
    } else {
      this.ctx.ledger.record(rec)
    }
    try { this.ctx.observe?.(rec, this.res) } catch (e) { this.ctx.log.warn({ err: (e as Error).message }, 'metrics: observe failed') }
  }
}

function msSince (start: bigint): number {
  return Number((process.hrtime.bigint() - start) / 1000n) / 1000
}

function isTimeout (err: Error): boolean {
  return err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError ||
    err instanceof undiciErrors.ConnectTimeoutError
}
