import type { IncomingMessage, ServerResponse } from 'node:http'
import { errors as undiciErrors, type Dispatcher } from 'undici'
import type { Logger } from '../lib/log.js'
import type { Admission, Limits } from '../budgets/limits.js'
import { refusalFor, type Allowlists } from '../budgets/allowlists.js'
import { maxTokensOf } from '../budgets/estimate.js'
import { GroupsError, IdentityError, identify, keyIdentity, type Identity, type IdentityOptions } from '../identity/identify.js'
import type { ApiKey } from '../keys/store.js'
import type { ResolvedUser, UserDirectory } from '../identity/directory.js'
import type { Ledger } from '../usage/ledger/ledger.js'
import type { Reconciler } from '../usage/ledger/reconcile.js'
import { addUsage, isRefusal, newRecord, type Outcome, type UsageRecord } from '../usage/ledger/record.js'
import { ResponseTap, answerFormat, type TapResult } from '../usage/tap/response-tap.js'
import { classifyRowKind, messageIdOf, type RowKindOptions } from '../usage/ledger/row-kind.js'
import { sendError } from '../lib/errors.js'
import { upstreamHeaders, type UpstreamHeaderPolicy } from './headers.js'
import type { BodyMemory } from './body/body-memory.js'
import { BodyScan, type JsonBody } from './body/json-body.js'
import { multipartType, scanMultipart } from './body/multipart.js'
import type { SelfService } from './self-service.js'
import type { Upstream } from './upstream.js'

// THE HOT PATH. One metered request, as meter() lists its steps: read the body, read what it says
// (a byte scan, never a parse), identify the user, describe the record, admit it against the
// spend controls, dispatch on the upstream pool with `user` rewritten; then the Exchange hands
// every response chunk to the client first and to the tap second. The client never waits for
// anything but OpenRouter: the record goes to the ledger after the last byte.

/** Inference endpoints whose JSON body gets the user's external id. */
export const METERED = new Set(['chat/completions', 'completions', 'embeddings', 'responses', 'messages', 'rerank',
  'images/generations', 'audio/speech'])
/** Endpoints that take multipart uploads: their `user` field is rewritten as a JSON body's is. */
const METERED_UPLOADS = new Set(['audio/transcriptions', 'audio/translations', 'images/edits', 'images/variations'])

/** What a metered endpoint's request body may be: a JSON object, or (uploads) multipart too. */
export type BodyFormat = 'json' | 'raw'

/**
 * Which POST paths are metered, and the body each takes. Every other non-GET request is refused
 * by the router, so nothing billable goes out unmetered; a closed list also keeps metric labels
 * bounded.
 */
export function meteredBodyFormat (endpoint: string): BodyFormat | null {
  if (METERED.has(endpoint)) return 'json'
  if (METERED_UPLOADS.has(endpoint)) return 'raw'
  return null
}

/** Everything the metered path uses, built once boot has opened the database. */
export interface MeterContext {
  /** OpenRouter: the pool, and the headers every request to it carries. */
  upstream: Upstream
  headers: UpstreamHeaderPolicy
  rules: MeterRules
  /** Who the users are, where records go, what may be spent. */
  directory: UserDirectory
  ledger: Ledger
  reconciler: Reconciler
  limits: Limits
  log: Logger
  /** Called when an exchange starts and ends: graceful shutdown waits for these. */
  track: (delta: 1 | -1) => void
  /** Optional observer (metrics); called once per finished exchange. */
  observe?: (rec: UsageRecord, res: ServerResponse) => void
  /** True once shutdown began: connections cut after the grace period are not client aborts. */
  stopping?: () => boolean
  /** The virtual "My usage" model, answered locally (SELF_SERVICE_MODEL). */
  selfService?: SelfService
  /** Model allowlists: a request for a model its caller may not use is refused with 403. */
  allowlists?: Allowlists
  /** Reused memory for bodies that arrive in several reads; without it, each gets its own. */
  bodies?: BodyMemory
}

/** What a request is checked against, and what its record is stamped with. */
export interface MeterRules {
  organizationId: string
  markupPercent: string
  maxBodyBytes: number
  identity: IdentityOptions
  /** Task and message-id header names (TASK_HEADER, MESSAGE_ID_HEADER) and the app's headers. */
  rowKinds?: RowKindOptions
}

const DROP_RESPONSE = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-connection'])

/** The longest model id accepted: OpenRouter's are under 100 characters. */
export const MAX_MODEL_CHARS = 256

/** A stream whose client left before the generation was named is aborted once it is, or after this. */
const ABORT_WAIT_FOR_HEADERS_MS = 10_000

/**
 * Answers one metered request. An exception in any step answers that request 500 and goes no
 * further: it never reaches the process-wide handler, which would stop every stream in flight.
 */
export function handleMetered (req: IncomingMessage, res: ServerResponse, endpoint: string, query: string, format: BodyFormat, ctx: MeterContext, key: ApiKey | null = null): void {
  meter(req, res, endpoint, query, format, ctx, key).catch((err: unknown) => failed(res, ctx, err))
}

/**
 * The steps, in order. A step that stops the request has answered the client itself (and the
 * step returns null); from dispatch on, the Exchange answers whatever happens.
 */
async function meter (req: IncomingMessage, res: ServerResponse, endpoint: string, query: string, format: BodyFormat, ctx: MeterContext, key: ApiKey | null): Promise<void> {
  const read = await readBody(req, res, ctx)
  if (!read) return
  const body = await readPayload(req, res, format, read, ctx)
  if (!body) return
  const who = key ? keyIdentity(req.headers, key, ctx.rules.identity) : identifyUser(req, res, body, ctx)
  if (!who) return
  const model = body.json?.string('model')
  if (model !== undefined && model.length > MAX_MODEL_CHARS) {
    // The ledger indexes the model (a btree entry holds 2704 bytes): no model id is this long.
    sendError(res, 400, 'invalid_request_error', 'invalid_model', `model is longer than ${MAX_MODEL_CHARS} characters`)
    return
  }
  if (ctx.selfService && model === ctx.selfService.model && endpoint === 'chat/completions') {
    return answerMyUsage(res, body.json!, model, who, ctx.selfService, ctx)
  }
  if (ctx.allowlists && !(await modelsAllowed(res, body, model, who, ctx.allowlists))) return
  const user = ctx.directory.resolve(who) // normalized once: the id, its external id and mapping agree
  // Only `user` changes: OpenRouter always reports usage (stream_options.include_usage is a no-op
  // there), so the body goes as the client sent it. Spliced in place from here on.
  const payload = body.withUser(user.externalUserId)
  const headers = requestHeaders(req, body, ctx)
  const rec = describe(req, endpoint, body, model, who, user, ctx)
  // Spend controls (src/budgets): a refused request is answered there and never dispatched; with
  // nothing to check (no budget, no rate limit) it goes on at once, holding nothing.
  const keyRpm = who.apiKey?.rpm ?? null
  const admission = ctx.limits.needsAdmission(rec, keyRpm) ? await admit(res, rec, body, keyRpm, ctx) : null
  if (admission === REFUSED) return
  dispatch(res, `${ctx.upstream.basePath}/${endpoint}${query}`, headers, payload, body.memory, rec, ctx, admission)
}

/**
 * "My usage": answered here, free, nothing goes upstream and no record (so no mapping) is
 * written. Its task prompts are one message. It counts toward the user's rate limits (never
 * their budget: a refused user must still be able to read why).
 */
async function answerMyUsage (res: ServerResponse, json: JsonBody, model: string, who: Identity, self: SelfService, ctx: MeterContext): Promise<void> {
  const answer = (): void => self.answer(res, { model, stream: json.isTrue('stream'), messages: json.singleMessage() ?? [] }, who, ctx.directory.externalIdOf(who))
  const userId = ctx.directory.userIdOf(who)
  if (!ctx.limits.hasRateLimit(userId)) return answer()
  const admitting = ctx.limits.admitRate(res, userId)
  let a: Admission | null
  try {
    a = await admitting
  } catch (err) {
    ctx.log.error({ err: (err as Error).message }, 'admission failed')
    sendError(res, 500, 'api_error', 'internal_error', 'usage-proxy could not check rate limits')
    return
  }
  if (!a) return
  // The slot is held until the answer has gone (USER_MAX_CONCURRENT); a client that left
  // while it was admitted gives it back at once.
  if (res.closed || res.destroyed) { a.done(); return }
  res.once('close', a.done)
  answer()
}

/**
 * Model allowlists (src/budgets/allowlists.ts): every model the request names (`model` and
 * OpenRouter's `models` fallback list) must be allowed by every list that applies to its caller,
 * else 403 model_not_allowed, before the budget reservation and before anything goes upstream.
 * A request that names no model (OpenRouter would pick one) is refused to a restricted caller.
 */
async function modelsAllowed (res: ServerResponse, body: RequestBody, model: string | undefined, who: Identity, allowlists: Allowlists): Promise<boolean> {
  let rs
  try {
    rs = await allowlists.restrictions(who.groups, who.apiKey?.models ?? null)
  } catch {
    sendError(res, 503, 'service_unavailable', 'allowlists_unavailable', 'The models you may use cannot be checked right now, so the request was not sent. Try again in a moment.', { 'retry-after': '5' })
    return false
  }
  if (rs.length === 0) return true
  // An upload names its model in form fields: every one is checked, whichever upstream reads.
  const fallbacks = body.uploadModels ?? body.json?.strings('models')
  const named = fallbacks === null ? null : [...(model === undefined ? [] : [model]), ...(fallbacks ?? [])]
  const why = refusalFor(rs, named)
  if (why === null) return true
  sendError(res, 403, 'invalid_request_error', 'model_not_allowed', why)
  return false
}

/** The record of a request about to be admitted: who asks, for what, and the kind of row it makes. */
function describe (req: IncomingMessage, endpoint: string, body: RequestBody, model: string | undefined, who: Identity, user: ResolvedUser, ctx: MeterContext): UsageRecord {
  const streamed = body.json?.isTrue('stream') ?? false
  return newRecord({
    organizationId: ctx.rules.organizationId,
    userId: user.userId,
    externalUserId: user.externalUserId,
    endpoint,
    model: model ?? null,
    streamed,
    markupPercent: ctx.rules.markupPercent,
    chatId: who.chatId,
    kind: classifyRowKind(req.headers, { streamed, messages: () => body.json?.singleMessage() }, ctx.rules.rowKinds),
    messageId: messageIdOf(req.headers, ctx.rules.rowKinds),
    mapping: user.mapping,
    groups: who.groups,
    apiKeyId: who.apiKey?.id ?? null,
  })
}

/** What admit() gives when the request was answered there (refused, or the check failed). */
const REFUSED = Symbol('refused')

/** The admission's holds, or REFUSED once the client was answered (402, 429, 503 or 500). */
async function admit (res: ServerResponse, rec: UsageRecord, body: RequestBody, keyRpm: number | null, ctx: MeterContext): Promise<Admission | typeof REFUSED> {
  const admitting = ctx.limits.admit(res, rec, body.bytes, requestedMaxTokens(body.json), keyRpm)
  try {
    const admission = await admitting
    if (admission) return admission
    if (isRefusal(rec.outcome)) ctx.observe?.(rec, res) // 402/429: its record says who, which model, why
    return REFUSED
  } catch (err) {
    ctx.log.error({ err: (err as Error).message }, 'admission failed')
    sendError(res, 500, 'api_error', 'internal_error', 'usage-proxy could not check spend limits')
    return REFUSED
  }
}

/** The completion tokens the client asked for, read from the scanned fields: the estimate needs them. */
function requestedMaxTokens (json: JsonBody | null): number | null {
  if (!json) return null
  return maxTokensOf({ max_completion_tokens: json.number('max_completion_tokens'), max_tokens: json.number('max_tokens'), max_output_tokens: json.number('max_output_tokens') })
}

/** A body as read: `room` free bytes follow it in `memory` (reused memory, when it was read into some). */
interface RawBody { raw: Buffer, room: number, memory: Buffer | null }

/**
 * The whole body, or null once answered 413 (past MAX_BODY_BYTES). A body of more than one read
 * goes into memory (reused: ctx.bodies) with free bytes after it (`room`), where `user` is spliced
 * in place; `memory` goes back when the exchange is over. With a declared length each read is
 * copied as it arrives and dies young; kept to the end, a 4 MB image's reads outlive the young
 * generation and cost full collections. Without one (chunked), the reads are copied at the end.
 * A client that leaves mid-body never resolves it: nothing follows.
 */
function readBody (req: IncomingMessage, res: ServerResponse, ctx: MeterContext): Promise<RawBody | null> {
  const maxBodyBytes = ctx.rules.maxBodyBytes
  const declared = Number(req.headers['content-length'])
  if (declared > maxBodyBytes) {
    sendError(res, 413, 'invalid_request_error', 'body_too_large', `request body exceeds ${maxBodyBytes} bytes`)
    req.resume()
    return Promise.resolve(null)
  }
  return new Promise((done) => {
    const known = Number.isSafeInteger(declared) ? declared : -1
    const take = (n: number): Buffer => ctx.bodies?.take(n + SPLICE_ROOM) ?? Buffer.allocUnsafeSlow(n + SPLICE_ROOM) // never pooled by Node: the room is ours
    let first: Buffer | null = null
    let parts: Buffer[] | null = null
    let mem: Buffer | null = null
    let size = 0
    let refused = false
    req.on('data', (chunk: Buffer) => {
      if (refused) return
      size += chunk.length
      if (size > maxBodyBytes) {
        refused = true
        first = parts = mem = null
        sendError(res, 413, 'invalid_request_error', 'body_too_large', `request body exceeds ${maxBodyBytes} bytes`)
        done(null)
        return
      }
      if (mem !== null && size <= known) { chunk.copy(mem, size - chunk.length); return }
      if (mem !== null) { parts = [mem.subarray(0, size - chunk.length), chunk]; mem = null; return } // more than declared: Node's parser never lets this happen
      if (first === null && parts === null) { first = chunk; return }
      if (first !== null) { parts = [first]; first = null }
      parts!.push(chunk)
      // Memory for the declared length once what arrived vouches for it: a client that declares
      // 20 MB and sends a few bytes gets no 20 MB buffer.
      if (size <= known && known <= Math.max(RESERVE_AHEAD, RESERVE_RATIO * size)) {
        mem = gather(parts!, take(known))
        parts = null
      }
    })
    req.on('end', () => {
      if (refused) return
      if (first !== null) { done({ raw: first, room: 0, memory: null }); return } // one read: a small body, copied when spliced
      mem ??= gather(parts ?? [], take(size))
      done({ raw: mem.subarray(0, size), room: mem.length - size, memory: ctx.bodies ? mem : null })
    })
  })
}

function gather (parts: Buffer[], into: Buffer): Buffer {
  let at = 0
  for (const p of parts) { p.copy(into, at); at += p.length }
  return into
}

/** A declared length is reserved up to this much, or this many times the bytes already read. */
const RESERVE_AHEAD = 1024 * 1024
const RESERVE_RATIO = 8

/** Enough for `,"user":` and any external id a deployment uses; a longer one is spliced by copy. */
const SPLICE_ROOM = 1024

/** What the later steps need from a body, JSON or multipart. */
interface RequestBody {
  /** The JSON body's top-level fields; null for a multipart upload. */
  json: JsonBody | null
  /** The body's own `user` field, if a string. */
  user: string | undefined
  /** A multipart upload's `model` fields (every one); null for a JSON body. */
  uploadModels: string[] | null
  /**
   * Bytes as received: the budgets' estimate reads them when a budget applies (a `user` spliced
   * in place may by then have replaced the closing brace: a few bytes more, never fewer).
   */
  bytes: Buffer
  /** The bytes to forward, with `user` set to the user's external id, as slices of the body read. */
  withUser: (user: string) => Buffer[]
  /** The reused memory the body was read into, if any: ctx.bodies gets it back after the exchange. */
  memory: Buffer | null
}

/**
 * The body's shape, or null once answered. JSON must be an object (else 400, nothing
 * forwarded); an upload endpoint also takes multipart/form-data, and nothing else, since a body
 * the sidecar cannot read could carry a `user` it did not choose. A body larger than one slice
 * is scanned a slice per event-loop turn, so a huge one delays nobody else.
 */
async function readPayload (req: IncomingMessage, res: ServerResponse, format: BodyFormat, { raw, room, memory }: RawBody, ctx: MeterContext): Promise<RequestBody | null> {
  const contentType = req.headers['content-type']
  if (format === 'raw' && !(contentType ?? '').includes('json')) {
    const type = multipartType(contentType)
    if (type === null) {
      sendError(res, 415, 'invalid_request_error', 'unsupported_media_type', 'upload endpoints take multipart/form-data (or a JSON object)')
      return null
    }
    if ('error' in type) { sendError(res, 400, 'invalid_request_error', 'invalid_multipart', type.error); return null }
    const form = scanMultipart(raw, type.boundary)
    if (!form) { sendError(res, 400, 'invalid_request_error', 'invalid_multipart', 'request body is not well-formed multipart/form-data'); return null }
    return { json: null, user: form.user, uploadModels: form.models, bytes: raw, withUser: (user) => form.withUserParts(user), memory }
  }
  const scan = new BodyScan(raw, room)
  for (;;) {
    if (res.destroyed) return null // the client left while its body was being read: nothing to forward
    if (scan.step(SCAN_SLICE_BYTES)) break
    await nextTurn()
  }
  const json = scan.body
  if (!json) { sendError(res, 400, 'invalid_request_error', 'invalid_json', 'request body must be a JSON object'); return null }
  return { json, user: json.string('user'), uploadModels: null, bytes: raw, withUser: (user) => json.withUserParts(user), memory }
}

/** Bytes scanned per event-loop turn: about a millisecond of work. */
const SCAN_SLICE_BYTES = 512 * 1024

function nextTurn (): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}

/** Who is asking; null once a bad identity was answered with 401. */
function identifyUser (req: IncomingMessage, res: ServerResponse, body: RequestBody, ctx: MeterContext): Identity | null {
  try {
    return identify(req.headers, body.user, ctx.rules.identity)
  } catch (err) {
    if (err instanceof IdentityError) { sendError(res, 401, 'authentication_error', 'invalid_identity', err.message); return null }
    if (err instanceof GroupsError) { sendError(res, 400, 'invalid_request_error', 'invalid_groups', err.message); return null }
    throw err
  }
}

/** The upstream request's headers: ours in, the client's credentials and identity out. */
function requestHeaders (req: IncomingMessage, body: RequestBody, ctx: MeterContext): Record<string, string> {
  const headers = upstreamHeaders(req.headers, ctx.headers, 'identity') // the tap must read plain bytes
  if (body.json) headers['content-type'] = 'application/json'
  return headers
}

/** On the upstream pool; from here on the Exchange answers the client whatever happens. */
function dispatch (res: ServerResponse, path: string, headers: Record<string, string>, parts: Buffer[], memory: Buffer | null, rec: UsageRecord, ctx: MeterContext, admission: Admission | null): void {
  // One buffer: spliced in place when it could be, else one copy of the slices. (Handing undici
  // the slices as an iterable saves that copy but is slower: its iterable writer costs more CPU
  // than the copy on a 4 MB image.)
  const body = parts.length === 1 ? parts[0] : Buffer.concat(parts)
  const exchange = new Exchange(res, rec, ctx, admission, memory, body)
  ctx.track(1)
  // The intent line is on disk before anything goes upstream: a crash from here on leaves a row
  // ('interrupted') for whatever OpenRouter may bill. It shares the write(2) at the end of this
  // turn with every other line of the turn.
  ctx.ledger.intent(rec)
  ctx.ledger.afterJournal(() => guarded(res, ctx, () => {
    if (exchange.withdrawIfGone()) return
    // undici reports its own failures, even synchronous ones, through exchange.onError.
    ctx.upstream.pool.dispatch({ method: 'POST', path, headers, body }, exchange)
  }))
}

/** A step's exception: logged, and that request (only) answered 500, OpenAI-style. */
function failed (res: ServerResponse, ctx: MeterContext, err: unknown): void {
  ctx.log.error({ err: err instanceof Error ? err.stack ?? err.message : String(err) }, 'metered request failed; answered 500')
  sendError(res, 500, 'api_error', 'internal_error', 'usage-proxy could not handle this request')
}

/** A callback outside the steps (the journal's write, for one): an exception in it is failed(). */
function guarded (res: ServerResponse, ctx: MeterContext, step: () => void): void {
  try {
    step()
  } catch (err) {
    failed(res, ctx, err)
  }
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
  /** Bytes of a declared-length body not yet received; null when no length was declared. */
  private lengthLeft: number | null = null
  /** The last chunk of a declared-length body, held until the record is written (see onData). */
  private tail: Buffer | undefined
  private done = false
  /** Set while the generation is named but its pending line is not yet handed to the journal. */
  private unjournaled: (() => void) | null = null
  /** Set from the pending line's append to its write: chunks that wait for it before the client gets them. */
  private held: Buffer[] | null = null
  /** writeRecord() filled the record and handed it to the ledger: it can be observed. */
  private recorded = false
  private resume: (() => void) | null = null

  constructor (private readonly res: ServerResponse, private readonly rec: UsageRecord, private readonly ctx: MeterContext, private readonly admission: Admission | null, private memory: Buffer | null, private readonly sent: Buffer) {
    res.once('close', () => { try { this.clientLeft() } catch (err) { ctx.log.error({ err: String(err) }, 'metered request: client close handling failed') } })
  }

  /**
   * The client left while the intent line was being written: nothing is sent, the intent is
   * withdrawn (no row at the next start) and the admission's holds are let go. True if so.
   */
  withdrawIfGone (): boolean {
    if (!this.clientGone) return false
    this.done = true
    this.ctx.ledger.withdraw(this.rec.eventId)
    this.admission?.done()
    if (this.admission) void this.ctx.limits.release(this.rec.eventId)
    this.answered(() => {})
    return true
  }

  private clientLeft (): void {
    if (this.done || this.res.writableFinished) return
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
      else if (lower === 'content-length') { this.lengthDeclared = true; this.lengthLeft = /^\d+$/.test(value.trim()) ? Number(value) : null }
      else if (lower === 'content-encoding') contentEncoding = value
      out.push(name, value)
    }
    this.resume = resume
    this.tap = new ResponseTap(statusCode < 300 ? answerFormat(contentType) : 'json', (id) => this.sawGeneration(id), contentEncoding)
    if (generationId && statusCode < 300) this.sawGeneration(generationId)
    if (this.clientGone) return true // read on, unseen; sawGeneration aborts a stream once it is named
    this.res.writeHead(statusCode, out)
    this.res.on('drain', resume)
    return true
  }

  onData (chunk: Buffer): boolean {
    // The tap reads first: a chunk that names the generation is journaled with it before the
    // client can see it (held below).
    this.tap!.write(chunk)
    if (this.clientGone) return true
    if (this.lengthLeft !== null && (this.lengthLeft -= chunk.length) <= 0 && chunk.length > 0) {
      // The declared length completes the answer for the client, with no terminator to wait
      // for: its last chunk goes out only with res.end, once the record is written (onComplete).
      // Whole, not just its last byte: a small answer then leaves in one write, headers and all.
      this.tail = chunk
      return true
    }
    // Bytes that can show the client its generation wait until the pending line naming it is
    // written: it joins this turn's one write(2) of the journal, and the bytes follow with what
    // else arrives meanwhile (at most one turn's reads: backpressure resumes with the next
    // chunk). A response that also ends in this turn then leaves in one write, terminator and
    // all: onComplete's end is queued behind the release.
    this.unjournaled?.()
    if (this.held !== null) { this.held.push(chunk); return true }
    return this.res.write(chunk)
  }

  /** The held chunks, in order, once the line naming their generation is written. */
  private release (): void {
    const held = this.held
    if (held === null) return
    this.held = null
    if (this.clientGone) return
    for (const c of held) this.res.write(c)
  }

  onComplete (): void {
    // Journal first, then end: a client never holds a finished response whose record is not
    // on disk yet. The bytes, [DONE] included, are out or queued ahead of this (held, above);
    // this only closes the body, at the end of this event-loop turn, with the journal's one write
    // for every record of the turn.
    if (this.done) return
    this.recordOutcome(null)
    this.ctx.ledger.afterJournal(() => this.answered(() => { this.release(); if (!this.clientGone) this.res.end(this.tail) }))
  }

  onError (err: Error): void {
    if (this.done) return
    const status = this.recordOutcome(err)
    this.ctx.ledger.afterJournal(() => this.answered(() => { this.release(); this.answerError(err, status) }))
  }

  /**
   * The client's last write. Metrics and the access line come after it: the client does not wait
   * for them. The exchange is over for a graceful shutdown only once the response has closed, its
   * bytes handed to the kernel: a slow client still reading the held chunk or a stream's
   * terminator is not cut off by the stop that follows.
   */
  private answered (answer: () => void): void {
    try {
      answer()
    } finally {
      if (this.recorded) {
        try { this.ctx.observe?.(this.rec, this.res) } catch (e) { this.ctx.log.warn({ err: (e as Error).message }, 'metrics: observe failed') }
      }
      if (this.memory) { this.ctx.bodies?.give(this.memory, this.sent); this.memory = null } // undici is done with the body
      if (this.res.closed || this.res.destroyed) this.ctx.track(-1)
      else this.res.once('close', () => this.ctx.track(-1))
    }
  }

  private answerError (err: Error, status: number): void {
    if (this.clientGone) return
    if (!this.res.headersSent) {
      if (status === 504) sendError(this.res, 504, 'upstream_error', 'upstream_timeout', 'OpenRouter did not answer in time')
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
    // a line; any other is pending before the event loop turns, let alone before a crash could.
    // A byte for the client waits for the line's write(2) (onData): a generation a client has
    // seen is never one the journal does not name.
    let journaled = false
    const journal = (): void => {
      if (journaled || this.done) return
      journaled = true
      this.unjournaled = null
      try {
        this.ctx.ledger.pending(this.rec)
      } catch (err) {
        this.ctx.log.error({ err: err instanceof Error ? err.message : String(err) }, 'metered request: could not journal it as pending')
      }
      this.held = []
      this.ctx.ledger.afterJournal(() => this.release())
    }
    this.unjournaled = journal
    queueMicrotask(journal)
  }

  /**
   * How the exchange ended, decided once for the record and for the client still waiting:
   * `status` is what the client saw, or is about to see.
   */
  private classify (err: Error | null, tap: TapResult | null): { outcome: Outcome, status: number } {
    const timeout = err !== null && isTimeout(err)
    const sent = this.res.headersSent
    const status = this.clientGone && !sent ? 499 : !sent && err ? (timeout ? 504 : 502) : this.status
    let outcome: Outcome
    if (this.clientGone) outcome = this.ctx.stopping?.() ? 'interrupted' : 'client_aborted'
    else if (err && !this.tap) outcome = timeout ? 'upstream_timeout' : 'upstream_unreachable'
    else if (this.status >= 400) outcome = 'upstream_error'
    else if (tap?.error) outcome = 'stream_error'
    else if (err) outcome = timeout ? 'upstream_timeout' : 'incomplete'
    else if (!tap?.usage) outcome = 'incomplete'
    else outcome = 'ok'
    return { outcome, status }
  }

  /** Records how the exchange ended and returns the status; a failure here is logged, never thrown. */
  private recordOutcome (err: Error | null): number {
    try {
      return this.writeRecord(err).status
    } catch (e) {
      this.ctx.log.error({ err: e instanceof Error ? e.stack ?? e.message : String(e) }, 'metered request: could not record its outcome')
      return 502
    }
  }

  private writeRecord (err: Error | null): UsageRecord {
    this.done = true
    this.admission?.done()
    const tap = this.tap?.end() ?? null
    const { outcome, status } = this.classify(err, tap)
    // Filled in place: the exchange owns its record (a pending line was serialized when written).
    const rec = this.rec
    rec.generationId ??= tap?.generationId ?? null
    rec.servedModel = tap?.servedModel ?? null
    rec.provider = tap?.provider ?? null
    rec.status = status
    rec.outcome = outcome
    rec.finishReason = tap?.finishReason ?? null
    rec.errorMessage = tap?.error?.message ?? (err && !this.clientGone ? err.message : null)
    rec.latencyMs = msSince(this.started)
    rec.ttfbMs = this.ttfbMs
    addUsage(rec, tap?.usage ?? null, 'inline')
    // Cost unknown but the generation known: ask OpenRouter what it charged. Partial usage is not
    // enough (an aborted /messages stream has tokens from message_start, no cost). An upstream
    // error answered before any generation is recorded as is, with no invented cost.
    if (rec.costUsd === null && rec.generationId && outcome !== 'upstream_error') {
      this.ctx.ledger.pending(rec)
      this.ctx.reconciler.enqueue(rec)
    } else {
      this.ctx.ledger.record(rec)
    }
    this.recorded = true
    return rec
  }
}

function msSince (start: bigint): number {
  return Number((process.hrtime.bigint() - start) / 1000n) / 1000
}

function isTimeout (err: Error): boolean {
  return err instanceof undiciErrors.HeadersTimeoutError || err instanceof undiciErrors.BodyTimeoutError ||
    err instanceof undiciErrors.ConnectTimeoutError
}
