import { replaceSpans, type Span } from './splice.js'

// multipart/form-data bodies (audio transcriptions, image edits): find the `user` fields and
// replace them with the user's external id, or add one, so the client cannot choose whom
// OpenRouter bills the upload to. The parts are located with Buffer.indexOf (native search);
// file contents are never looked at, and the new body is the old one's slices around the new
// value, copied once.
//
// Strict where parsers could disagree: a preamble, a boundary line followed by anything but `--`
// or a line end, a missing closing delimiter, a header line without a colon is refused, so no parser
// upstream can find a `user` part this one did not replace. So is a parameter given twice (a
// `boundary` in Content-Type, a `name` in a part's Content-Disposition, in any case, quoted or
// not) or written so that parsers could split it differently: one parser keeps the first, another
// the last, and would cut the body, or name a part, where this one does not.

export type { Span }

/**
 * What a multipart/form-data content type says: its boundary, or why it is refused (400: its
 * parameters could be read two ways); null for any other type, or one without a usable boundary.
 */
export function multipartType (contentType: string | undefined): { boundary: string } | { error: string } | null {
  if (!contentType) return null
  const semi = contentType.indexOf(';')
  if ((semi === -1 ? contentType : contentType.slice(0, semi)).trim().toLowerCase() !== 'multipart/form-data') return null
  const p = semi === -1 ? new Map<string, string>() : params(contentType.slice(semi + 1))
  if (p === null) return { error: 'the multipart/form-data content type has a parameter given twice or written ambiguously' }
  const b = p.get('boundary')
  // RFC 2046: 1 to 70 characters.
  return b !== undefined && b.length >= 1 && b.length <= 70 ? { boundary: b } : null
}

/** The boundary of a multipart/form-data content type; null for any other type, or a refused one. */
export function multipartBoundary (contentType: string | undefined): string | null {
  const type = multipartType(contentType)
  return type !== null && 'boundary' in type ? type.boundary : null
}

export class MultipartBody {
  constructor (
    readonly bytes: Buffer,
    private readonly boundary: string,
    /** Content of every part named `user`. */
    private readonly users: Span[],
    /** Where the closing delimiter (`--boundary--`) begins: a new part goes here. */
    private readonly close: number,
    /** Content of every part named `model`. */
    private readonly modelParts: Span[] = [],
  ) {}

  /** Every `model` field, as text, in order: parsers upstream differ on which of several they read. */
  get models (): string[] {
    return this.modelParts.map((m) => this.bytes.toString('utf8', m.start, m.end))
  }

  /** The last `user` field, as text (the JSON path also reads the last one). */
  get user (): string | undefined {
    const u = this.users.at(-1)
    return u && this.bytes.toString('utf8', u.start, u.end)
  }

  withUser (user: string): Buffer {
    return Buffer.concat(this.withUserParts(user))
  }

  /** The body with every `user` part's content replaced (or a part added), as slices of the original. */
  withUserParts (user: string): Buffer[] {
    const b = this.bytes
    if (this.users.length === 0) {
      const part = Buffer.from(`--${this.boundary}\r\nContent-Disposition: form-data; name="user"\r\n\r\n${user}\r\n`)
      return [b.subarray(0, this.close), part, b.subarray(this.close)]
    }
    const value = Buffer.from(user)
    return replaceSpans(b, this.users, value)
  }
}

const CRLF = Buffer.from('\r\n')
const HEADER_END = Buffer.from('\r\n\r\n')

/** The parts of a multipart body; null when it is malformed. */
export function scanMultipart (bytes: Buffer, boundary: string): MultipartBody | null {
  const dash = Buffer.from(`--${boundary}`)
  const delimiter = Buffer.concat([CRLF, dash])
  // The first boundary opens the body. A preamble is legal but no client sends one, and parsers
  // disagree on what they find in it: refused.
  if (!startsWithAt(bytes, dash, 0)) return null
  let at = 0
  const users: Span[] = []
  const models: Span[] = []
  for (;;) {
    let p = at + dash.length
    if (bytes[p] === 0x2d && bytes[p + 1] === 0x2d) return new MultipartBody(bytes, boundary, users, at, models) // the closing delimiter
    while (bytes[p] === 0x20 || bytes[p] === 0x09) p++ // transport padding
    if (bytes[p] !== 0x0d || bytes[p + 1] !== 0x0a) return null
    p += 2
    let contentStart: number
    let headers: string
    if (bytes[p] === 0x0d && bytes[p + 1] === 0x0a) {
      headers = ''
      contentStart = p + 2
    } else {
      const h = bytes.indexOf(HEADER_END, p)
      if (h === -1) return null
      headers = bytes.toString('latin1', p, h)
      contentStart = h + 4
    }
    const next = bytes.indexOf(delimiter, contentStart)
    if (next === -1) return null
    const name = partName(headers)
    if (name === null) return null
    if (name === 'user') users.push({ start: contentStart, end: next })
    else if (name === 'model') models.push({ start: contentStart, end: next })
    at = next + 2
  }
}

function startsWithAt (bytes: Buffer, what: Buffer, at: number): boolean {
  return bytes.length - at >= what.length && bytes.compare(what, 0, what.length, at, at + what.length) === 0
}

/** The field name of a part, from its Content-Disposition header; null if a header line is malformed. */
function partName (headers: string): string | undefined | null {
  if (headers === '') return undefined
  let name: string | undefined
  let seen = false
  for (const line of headers.split('\r\n')) {
    const colon = line.indexOf(':')
    if (colon <= 0) return null // not a header: a line a lenient parser might read otherwise
    if (line.slice(0, colon).trim().toLowerCase() !== 'content-disposition') continue
    // A second Content-Disposition, or name and name* that differ, would let a parser upstream
    // read `user` where this one reads another name, and keep the client's value: refused.
    if (seen) return null
    seen = true
    const value = line.slice(colon + 1)
    const semi = value.indexOf(';')
    const p = params(semi === -1 ? '' : value.slice(semi + 1))
    if (p === null) return null
    const extended = p.get('name*')
    const plain = p.get('name')
    const plainName = plain === undefined ? undefined : Buffer.from(plain, 'latin1').toString('utf8')
    if (extended !== undefined) {
      // RFC 5987: charset'language'percent-encoded
      const quote = extended.indexOf("'", extended.indexOf("'") + 1)
      try { name = decodeURIComponent(extended.slice(quote + 1)) } catch { name = extended }
      if (plainName !== undefined && plainName !== name) return null
      continue
    }
    name = plainName
  }
  return name
}

/**
 * `; key=value; key="quoted \" value"` parameters, keys lower-cased; null when one is given twice
 * (whatever its case), has no `=`, or has a quoted value left open or followed by more than space.
 */
function params (s: string): Map<string, string> | null {
  const out = new Map<string, string>()
  let i = 0
  for (;;) {
    while (i < s.length && (s[i] === ';' || s[i] === ' ' || s[i] === '\t')) i++
    if (i >= s.length) return out
    const eq = s.indexOf('=', i)
    const semi = s.indexOf(';', i)
    if (eq === -1 || (semi !== -1 && semi < eq)) return null // `; flag;`: parsers disagree on what follows
    const key = s.slice(i, eq).trim().toLowerCase()
    if (key === '') return null
    i = eq + 1
    while (s[i] === ' ' || s[i] === '\t') i++
    let value = ''
    if (s[i] === '"') {
      i++
      while (i < s.length && s[i] !== '"') {
        if (s[i] === '\\' && i + 1 < s.length) i++
        value += s[i++]
      }
      if (i >= s.length) return null // never closed
      i++
      while (s[i] === ' ' || s[i] === '\t') i++
      if (i < s.length && s[i] !== ';') return null // `name="a"b`
    } else {
      const end = s.indexOf(';', i)
      value = (end === -1 ? s.slice(i) : s.slice(i, end)).trim()
      i = end === -1 ? s.length : end
    }
    if (out.has(key)) return null
    out.set(key, value)
  }
}
