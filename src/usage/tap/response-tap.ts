import { brotliDecompressSync, gunzipSync, inflateSync } from 'node:zlib'
import { SseScanner, type SseEvent } from './sse-scanner.js'
import { exactObjectNearEnd } from './exact-json.js'
import { findUsage, mergeUsage, normalizeUsage, type Usage } from './extract.js'

// The tee's reading side: it sees every byte the client gets, after the client got it, and keeps
// only what a ledger row needs. It never changes or holds back the bytes themselves.

export interface TapResult {
  generationId: string | null
  servedModel: string | null
  provider: string | null
  finishReason: string | null
  usage: Usage | null
  error: { code: string | null, message: string } | null
  /** The body could not be understood (non-JSON, broken SSE, too large to inspect). */
  malformed: boolean
  /** A stream ended with `data: [DONE]`. */
  done: boolean
}

/** How an answer's body is written, as its content type says: what the tap reads it as. */
export type AnswerFormat = 'sse' | 'json' | 'other'

/** JSON bodies larger than this are streamed through but not inspected; /generation fills in. */
const MAX_JSON_INSPECT = 16 * 1024 * 1024
/** Above this a JSON body is read at its head and tail only. */
const FULL_PARSE_LIMIT = 1024 * 1024
const DONE = Buffer.from('[DONE]')
/**
 * The sidecar asks for `accept-encoding: identity`, but an upstream may compress anyway. Such a
 * body is kept compressed up to this size and decompressed once at its end (with the output
 * bounded too); past either bound, or in an unknown coding, the tap sees nothing and the record
 * is reconciled through /generation.
 */
const MAX_ENCODED_INSPECT = 8 * 1024 * 1024
const DECODERS: Record<string, (b: Buffer, o: { maxOutputLength: number }) => Buffer> = {
  gzip: gunzipSync, 'x-gzip': gunzipSync, deflate: inflateSync, br: brotliDecompressSync,
}
/**
 * One regular-expression pass over the event's bytes (as latin1: keys are ASCII) finds the few
 * events worth parsing: usage or an error object, or a finish reason that is not null. A key can
 * only match outside JSON strings, where quotes are never escaped.
 */
const TELLING = /"(?:usage|error)" *: *\{|"finish_reason" *: *"([^"\\]*)"/
const USAGE_OR_ERROR = /"(?:usage|error)" *: *\{/
/** Responses API events that carry the whole response, usage included. */
const FINAL_EVENTS = new Set(['response.completed', 'response.failed', 'response.incomplete'])

export function answerFormat (contentType: string | undefined): AnswerFormat {
  if (!contentType) return 'other'
  if (contentType.includes('text/event-stream')) return 'sse'
  if (contentType.includes('json')) return 'json'
  return 'other'
}

type Obj = { [key: string]: unknown }
const asObj = (v: unknown): Obj | undefined => (v !== null && typeof v === 'object' && !Array.isArray(v) ? v as Obj : undefined)
const text = (v: unknown): string | null => (typeof v === 'string' && v !== '' ? v : null)

export class ResponseTap {
  readonly result: TapResult = {
    generationId: null, servedModel: null, provider: null, finishReason: null,
    usage: null, error: null, malformed: false, done: false,
  }

  private readonly scanner: SseScanner | null
  private parts: Buffer[] | null = null
  private size = 0
  private seenFirst = false
  /** Compressed bytes, kept whole until end() when the response has a content-encoding. */
  private encoded: { coding: string, parts: Buffer[] | null, size: number } | null = null

  /** `contentEncoding` is the response's Content-Encoding header, if any. */
  constructor (readonly format: AnswerFormat, private readonly onGenerationId?: (id: string) => void, contentEncoding?: string) {
    const coding = contentEncoding?.trim().toLowerCase()
    if (coding && coding !== 'identity' && format !== 'other') {
      this.encoded = { coding, parts: DECODERS[coding] ? [] : null, size: 0 }
      this.scanner = null
      return
    }
    this.scanner = format === 'sse' ? new SseScanner((e) => this.event(e)) : null
    if (format === 'json') this.parts = []
  }

  write (chunk: Buffer): void {
    if (this.encoded) { this.keepEncoded(chunk); return }
    if (this.scanner) { this.scanner.push(chunk); return }
    if (this.parts) {
      this.size += chunk.length
      if (this.size > MAX_JSON_INSPECT) { this.parts = null; this.result.malformed = true; return }
      this.parts.push(chunk)
    }
  }

  end (): TapResult {
    if (this.encoded) return this.decodeAndRead(this.encoded)
    if (this.scanner) this.scanner.end()
    else if (this.parts) this.json(Buffer.concat(this.parts, this.size).toString('utf8'))
    this.parts = null
    return this.result
  }

  private keepEncoded (chunk: Buffer): void {
    const e = this.encoded!
    if (!e.parts) return
    e.size += chunk.length
    if (e.size > MAX_ENCODED_INSPECT) { e.parts = null; return }
    e.parts.push(chunk)
  }

  /** The whole body in one synchronous pass, by a plain tap of the same format. */
  private decodeAndRead (e: { coding: string, parts: Buffer[] | null, size: number }): TapResult {
    this.encoded = null
    let plain: Buffer | null = null
    if (e.parts) {
      try { plain = DECODERS[e.coding](Buffer.concat(e.parts, e.size), { maxOutputLength: MAX_JSON_INSPECT }) } catch { plain = null }
    }
    if (plain === null) { this.result.malformed = true; return this.result }
    const inner = new ResponseTap(this.format, this.onGenerationId)
    inner.write(plain)
    Object.assign(this.result, inner.end())
    return this.result
  }

  private event (e: SseEvent): void {
    const data = e.data
    if (data.length === DONE.length && data.equals(DONE)) { this.result.done = true; return }
    // Content deltas are the bulk of a stream: one regular-expression pass over their bytes
    // rejects them without decoding. Only the first event and those carrying usage or an error
    // are parsed; a finish reason alone is read straight from the match.
    const final = e.type !== undefined && FINAL_EVENTS.has(e.type)
    const latin1 = data.toString('latin1')
    const m = final ? null : TELLING.exec(latin1)
    if (m !== null && m[1] !== undefined && this.seenFirst && !USAGE_OR_ERROR.test(latin1)) {
      this.result.finishReason = m[1]
      return
    }
    if (!final && m === null && this.seenFirst) return
    const text = data.toString('utf8')
    const o = this.parse(text)
    if (!o) return
    if (!this.seenFirst) { this.seenFirst = true; this.identify(o) }
    if (final || m !== null) this.absorb(o, text)
  }


  private parse (text: string): Obj | undefined {
    try {
      const o = asObj(JSON.parse(text))
      if (o) return o
    } catch { /* fall through */ }
    this.result.malformed = true
    return undefined
  }

  private identify (o: Obj): void {
    const holder = asObj(o.response) ?? asObj(o.message) ?? o
    const id = text(holder.id) ?? text(o.id)
    if (id && !this.result.generationId) {
      this.result.generationId = id
      this.onGenerationId?.(id)
    }
    this.result.servedModel ??= text(holder.model) ?? text(o.model)
    this.result.provider ??= text(o.provider) ?? text(holder.provider)
  }

  private absorb (o: Obj, text: string): void {
    if (!this.result.generationId) this.identify(o)
    const usage = normalizeUsage(findUsage(o), text)
    if (usage) this.result.usage = mergeUsage(this.result.usage, usage)
    this.error(o)
    this.finish(o)
  }

  private error (o: Obj): void {
    const err = asObj(o.error) ?? (o.type === 'response.failed' ? asObj(asObj(o.response)?.error) : undefined)
    if (!err) return
    const code = err.code === undefined || err.code === null ? null : String(err.code)
    this.result.error = { code, message: typeof err.message === 'string' ? err.message : JSON.stringify(err) }
  }

  private finish (o: Obj): void {
    const choices = Array.isArray(o.choices) ? o.choices : undefined
    const fr = choices && choices.length > 0 ? text(asObj(choices[0])?.finish_reason) : null
    const stop = text(asObj(o.delta)?.stop_reason) // Messages API
    const status = o.type === 'response.completed' || o.type === 'response.incomplete' ? text(asObj(o.response)?.status) : null
    const reason = fr ?? stop ?? status
    if (reason) this.result.finishReason = reason
  }

  private json (body: string): void {
    if (body.length > FULL_PARSE_LIMIT) { this.largeJson(body); return }
    let o: Obj | undefined
    try { o = asObj(JSON.parse(body)) } catch { o = undefined }
    if (!o) { this.result.malformed = body.length > 0; return }
    this.identify(o)
    this.error(o)
    this.finish(o)
    // The cost keeps its exact decimal digits: they are read back from the text.
    const usage = normalizeUsage(findUsage(o), body)
    if (usage) this.result.usage = mergeUsage(this.result.usage, usage)
  }

  private largeJson (body: string): void {
    const head = body.slice(0, 4096)
    const id = headField(head, 'id')
    if (id) { this.result.generationId = id; this.onGenerationId?.(id) }
    this.result.servedModel = headField(head, 'model')
    this.result.provider = headField(head, 'provider')
    const exact = exactObjectNearEnd(body, 'usage')
    const usage = normalizeUsage(exact)
    if (usage) this.result.usage = usage
    else this.result.malformed = true
  }
}

/**
 * A large body (a batch of embeddings) is not parsed whole: that would stall every other stream.
 * The id, model and provider come first in every shape; usage comes last. A `"usage"` key can
 * only match outside strings, where a quote is never escaped, so the tail is enough.
 */
function headField (head: string, key: string): string | null {
  const m = new RegExp(`"${key}"\\s*:\\s*"([^"\\\\]{1,300})"`).exec(head)
  return m ? m[1] : null
}
