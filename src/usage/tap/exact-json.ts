// JSON.parse turns 0.000123456789012345678 into the nearest double. Money must not pass through a
// double, so this small parser keeps every number as its exact decimal text. It is used only on
// the few small objects that carry money (a usage object, a /generation answer), never on a
// whole response body.

export type ExactJson = string | boolean | null | ExactJson[] | { [key: string]: ExactJson }

export class ExactJsonError extends Error {}

/** Parses one JSON value starting at `pos` (leading whitespace allowed); numbers stay strings. */
export function parseExactAt (text: string, pos: number): { value: ExactJson, end: number } {
  let i = pos
  const fail = (what: string): never => { throw new ExactJsonError(`${what} at ${i}`) }
  const ws = () => { while (i < text.length && (text[i] === ' ' || text[i] === '\n' || text[i] === '\r' || text[i] === '\t')) i++ }
  const value = (): ExactJson => {
    ws()
    const c = text[i]
    if (c === '{') {
      i++
      const obj: { [key: string]: ExactJson } = {}
      ws()
      if (text[i] === '}') { i++; return obj }
      for (;;) {
        ws()
        if (text[i] !== '"') fail('expected key')
        const key = str()
        ws()
        if (text[i] !== ':') fail('expected colon')
        i++
        obj[key] = value()
        ws()
        if (text[i] === ',') { i++; continue }
        if (text[i] === '}') { i++; return obj }
        fail('expected , or }')
      }
    }
    if (c === '[') {
      i++
      const arr: ExactJson[] = []
      ws()
      if (text[i] === ']') { i++; return arr }
      for (;;) {
        arr.push(value())
        ws()
        if (text[i] === ',') { i++; continue }
        if (text[i] === ']') { i++; return arr }
        fail('expected , or ]')
      }
    }
    if (c === '"') return str()
    if (c === 't' && text.startsWith('true', i)) { i += 4; return true }
    if (c === 'f' && text.startsWith('false', i)) { i += 5; return false }
    if (c === 'n' && text.startsWith('null', i)) { i += 4; return null }
    const m = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y
    m.lastIndex = i
    const num = m.exec(text)
    if (num === null || num[0] === '') return fail('unexpected character')
    i += num[0].length
    return num[0]
  }
  const str = (): string => {
    // Find the closing quote, skipping escapes, then let JSON.parse decode the escapes.
    const start = i
    i++
    for (;;) {
      const c = text[i]
      if (c === undefined) fail('unterminated string')
      if (c === '\\') { i += 2; continue }
      i++
      if (c === '"') break
    }
    return JSON.parse(text.slice(start, i)) as string
  }
  const v = value()
  return { value: v, end: i }
}

export function parseExact (text: string): ExactJson {
  const { value, end } = parseExactAt(text, 0)
  if (text.slice(end).trim() !== '') throw new ExactJsonError(`trailing data at ${end}`)
  return value
}

/**
 * Finds the object stored under `"key":` nearest the end of a JSON text and parses it exactly.
 * Usage sits at the end of a completion, so this reads a few hundred characters, not the body.
 * Inside a JSON string every quote is escaped, so `"key"` followed by a colon only matches a
 * real key: generated content cannot pass for it.
 */
export function exactObjectNearEnd (text: string, key: string): ExactJson | undefined {
  const needle = `"${key}"`
  let at = text.lastIndexOf(needle)
  while (at !== -1) {
    let i = at + needle.length
    while (text[i] === ' ' || text[i] === '\n' || text[i] === '\r' || text[i] === '\t') i++
    if (text[i] === ':') {
      try {
        const { value } = parseExactAt(text, i + 1)
        if (value !== null && typeof value === 'object') return value
      } catch { /* not this one */ }
    }
    at = at === 0 ? -1 : text.lastIndexOf(needle, at - 1)
  }
  return undefined
}

/**
 * A decimal string (from exact parsing) or undefined. A JS number is refused: its digits are a
 * double's, not the ones that were sent.
 */
export function decimal (v: unknown): string | undefined {
  if (typeof v === 'string' && /^-?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(v)) return v
  return undefined
}

/** A token count: a non-negative integer, or undefined. */
export function count (v: unknown): number | undefined {
  const n = typeof v === 'string' ? Number(v) : v
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 ? n : undefined
}

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y

/**
 * The exact decimal text of the number stored under `"key":` in a JSON text, given the value
 * JSON.parse made of it. The hot path parses natively (fast) and then recovers the digits here:
 * a key can only match outside strings (a quote inside a string is always escaped), and the
 * parsed value must match, so a look-alike elsewhere is never taken for it.
 */
export function rawNumber (text: string, key: string, parsed: unknown): string | undefined {
  if (typeof parsed !== 'number') return undefined
  const needle = `"${key}"`
  let at = text.lastIndexOf(needle)
  while (at !== -1) {
    let i = at + needle.length
    while (text.charCodeAt(i) === 32 || text.charCodeAt(i) === 10 || text.charCodeAt(i) === 13 || text.charCodeAt(i) === 9) i++
    if (text.charCodeAt(i) === 58) { // ':'
      i++
      while (text.charCodeAt(i) === 32 || text.charCodeAt(i) === 10 || text.charCodeAt(i) === 13 || text.charCodeAt(i) === 9) i++
      NUMBER.lastIndex = i
      const m = NUMBER.exec(text)
      if (m && Number(m[0]) === parsed) return m[0]
    }
    at = at === 0 ? -1 : text.lastIndexOf(needle, at - 1)
  }
  return undefined
}
