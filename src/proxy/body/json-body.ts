import { isUtf8 } from 'node:buffer'
import { FirstMessageReader, type FirstMessage, type MessageStart } from './first-message.js'
import { JsonScanner } from './json-scan.js'
import { decodeJsonString } from './json-text.js'
import { replaceSpans, type Span } from './splice.js'

// The request body as the proxy sees it: bytes, a few top-level fields read in place, and the
// `user` field spliced in. Nothing else is decoded: a 500 KB chat history or a 4 MB image is
// validated in one pass and forwarded as the client sent it.
//
// The verdict is JSON.parse's on `raw.toString('utf8')`, as before this module existed: invalid
// UTF-8 is first replaced the way toString does (U+FFFD), so a stray byte inside a string is
// accepted and forwarded repaired, and one outside a string is refused. A UTF-8 BOM is refused,
// as JSON.parse refuses U+FEFF.
//
// No client byte goes through JSON.parse: strings are decoded here (json-text.ts), at most
// FIELD_BYTES of one, and the first message is read by the same scan (first-message.ts).

/** The top-level fields read; add a name here to read another. */
export const FIELDS = new Set(['model', 'models', 'stream', 'user', 'max_tokens', 'max_completion_tokens', 'max_output_tokens', 'stream_options', 'messages'])

/** The most entries strings() reads of one array: OpenRouter's `models` fallback list takes a few. */
export const MAX_LIST_ITEMS = 64

/** A byte range [start, end) of `bytes`. */
export type { Span }
export type { MessageStart }

/** Bytes of a string field (`model`, `user`) that are decoded: no model or user id is longer. */
export const FIELD_BYTES = 64 * 1024
/** A key longer than this (escapes included) is no name in FIELDS. */
const KEY_BYTES = 6 * Math.max(...[...FIELDS].map((f) => f.length))

export class JsonBody {
  /** Last occurrence of each field in FIELDS, as JSON.parse keeps the last duplicate. */
  private readonly fields = new Map<string, Span>()
  /** Every occurrence of `user`: all are replaced, so no parser upstream can read the client's. */
  private readonly users: Span[] = []
  private close = -1
  private count = 0
  /** What the last `messages` held, read by the body's scan; null when it was not an array. */
  private first: FirstMessage | null = null
  /** @internal set by BodyScan: the reader of the first message. */
  reader: FirstMessageReader | null = null

  /** The bytes that are forwarded: the client's, or their UTF-8 repair. */
  readonly bytes: Buffer
  /** Writable bytes of `bytes`' memory right after it, free for an in-place splice (0: none). */
  private room: number
  private spliced = false

  constructor (bytes: Buffer, room = 0) { this.bytes = bytes; this.room = room }

  /** The value's bytes of a top-level field, if present. */
  span (name: string): Span | undefined { return this.fields.get(name) }

  /** A top-level string field, decoded; undefined when absent or not a string. */
  string (name: string): string | undefined {
    const s = this.fields.get(name)
    return s && stringAt(this.bytes, s)
  }

  /** A top-level number field as JSON.parse reads it; undefined when absent or not a number. */
  number (name: string): number | undefined {
    const s = this.fields.get(name)
    if (!s) return undefined
    const c = this.bytes[s.start]
    return c === 0x2d || (c >= 0x30 && c <= 0x39) ? Number(this.bytes.toString('latin1', s.start, s.end)) : undefined
  }

  /**
   * `messages` when it holds exactly one message (what the task heuristic looks for), else null:
   * that message's role and the start of its content (first-message.ts), or null for an item
   * that is not an object. Read during the body's scan: nothing is scanned or parsed again.
   */
  singleMessage (): [MessageStart | null] | null {
    const f = this.first
    return f !== null && f.items === 1 ? [f.message] : null
  }

  /**
   * A top-level array of strings, decoded: undefined when absent (or null), null when it is not
   * an array of strings or holds more than MAX_LIST_ITEMS. The bytes are valid JSON (the scan
   * checked them), so each string ends at the first unescaped quote.
   */
  strings (name: string): string[] | null | undefined {
    const s = this.fields.get(name)
    if (!s) return undefined
    const b = this.bytes
    if (b[s.start] === 0x6e) return undefined // null
    if (b[s.start] !== 0x5b) return null
    const out: string[] = []
    let i = s.start + 1
    for (;;) {
      while (i < s.end && isSpace(b[i])) i++
      if (b[i] === 0x5d) return out
      if (b[i] !== 0x22 || out.length === MAX_LIST_ITEMS) return null
      let j = i + 1
      while (b[j] !== 0x22) j += b[j] === 0x5c ? 2 : 1
      out.push(stringAt(b, { start: i, end: j + 1 })!)
      i = j + 1
      while (i < s.end && isSpace(b[i])) i++
      if (b[i] === 0x2c) i++
    }
  }

  /** Whether a top-level field is the literal `true`. */
  isTrue (name: string): boolean {
    const s = this.fields.get(name)
    return s !== undefined && this.bytes[s.start] === 0x74
  }

  /** The body with every top-level `user` set to `user` (or one appended), as one new buffer. */
  withUser (user: string): Buffer {
    return Buffer.concat(this.withUserParts(user))
  }

  /**
   * The same as slices of the client's bytes around the new value, or, when the body was read
   * with room after it and gets a new `user`, the one buffer it was spliced into in place (then
   * only once: later calls throw).
   */
  withUserParts (user: string): Buffer[] {
    if (this.spliced) throw new Error('JsonBody: the body was already spliced in place')
    const value = Buffer.from(JSON.stringify(user))
    const b = this.bytes
    if (this.users.length === 0) {
      const insert = Buffer.from(this.count === 0 ? `"user":${value}` : `,"user":${value}`)
      if (insert.length <= this.room) {
        // In place: only the closing brace (and any whitespace after it) moves, so a large body
        // is never copied a second time. `bytes` before the brace, which the spans read, is untouched.
        const whole = Buffer.from(b.buffer, b.byteOffset, b.length + insert.length)
        whole.copyWithin(this.close + insert.length, this.close, b.length)
        insert.copy(whole, this.close)
        this.spliced = true
        return [whole]
      }
      return [b.subarray(0, this.close), insert, b.subarray(this.close)]
    }
    return replaceSpans(b, this.users, value)
  }

  /** @internal called by the scan for each top-level member. */
  add (key: string, span: Span): void {
    this.count++
    if (!FIELDS.has(key)) return
    this.fields.set(key, span)
    if (key === 'user') this.users.push(span)
    else if (key === 'messages') this.first = this.reader?.result(span.start) ?? null
  }

  /** @internal */
  end (close: number, count: number): void { this.close = close; this.count = count }
}

/**
 * Scans a request body in slices. `step(budget)` reads on about `budget` bytes and returns true
 * when done; `body` is then the result, or null when the body is not a JSON object.
 */
export class BodyScan {
  body: JsonBody | null = null
  private readonly scanner: JsonScanner | null

  /** `room`: bytes of raw's memory after it that may be written (see JsonBody.withUserParts). */
  constructor (raw: Buffer, room = 0) {
    // Replace invalid UTF-8 exactly as raw.toString('utf8') did before JSON.parse.
    const bytes = isUtf8(raw) ? raw : Buffer.from(raw.toString('utf8'))
    const body = new JsonBody(bytes, bytes === raw ? room : 0)
    let first = 0
    while (first < bytes.length && isSpace(bytes[first])) first++
    // Not an object: refused whatever follows, without reading it.
    if (bytes[first] !== 0x7b) { this.scanner = null; return }
    this.body = body
    const reader = body.reader = new FirstMessageReader(bytes)
    this.scanner = new JsonScanner(bytes, first, bytes.length, (ks, ke, escaped, vs, ve) => {
      body.add(keyName(bytes, ks, ke, escaped), { start: vs, end: ve })
      return undefined
    }, reader)
  }

  step (budget = Infinity): boolean {
    const s = this.scanner
    if (s === null) return true
    if (!s.run(budget)) return false
    if (s.valid) this.body!.end(s.rootClose, s.members)
    else this.body = null
    return true
  }
}

/**
 * The JSON string at `span` of valid JSON bytes, decoded (its first `maxBytes` bytes when longer,
 * see decodeJsonString); undefined if the value is not a string.
 */
export function stringAt (bytes: Buffer, span: Span, maxBytes = FIELD_BYTES): string | undefined {
  if (bytes[span.start] !== 0x22) return undefined
  return decodeJsonString(bytes, span.start, span.end, maxBytes)
}

function keyName (bytes: Buffer, start: number, end: number, escaped: boolean): string {
  // Only ASCII names are looked up, and non-ASCII bytes never decode to ASCII under latin1.
  if (!escaped) return bytes.toString('latin1', start + 1, end - 1)
  // A key too long to be one of them is not decoded: its name is none of theirs.
  return end - start - 2 <= KEY_BYTES ? decodeJsonString(bytes, start, end) : ''
}

function isSpace (c: number): boolean { return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09 }
