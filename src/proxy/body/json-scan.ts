import { forgetWindow, restEscaped, simdStrings, skipRest } from './json-strings.js'

// A validating JSON scanner over bytes: one pass, no decoding, no recursion, no allocation per
// value. It answers exactly what JSON.parse would (valid or not) for UTF-8 input, and reports the
// byte ranges of the root container's direct members, which is all the proxy needs to read a
// few top-level fields and splice one in without materializing the rest.
//
// Depth is tracked in a bit stack (one bit per level), so a body nested a million levels deep
// costs a few hundred kilobytes and no call stack. Work can be cut into slices (run(budget)):
// the scanner pauses between tokens and resumes where it stopped.

/** A direct member of the root: its key's quoted bytes (-1 for array items) and its value's. */
export type MemberVisitor = (keyStart: number, keyEnd: number, keyEscaped: boolean, valueStart: number, valueEnd: number) => boolean | undefined

/**
 * Values a few levels below the root, for a reader that wants more than the root's members (the
 * first message of `messages`) without a second pass. Level 1 is a member of the root, level 2 a
 * member of that, and so on; keys are quoted bytes as for MemberVisitor, -1 for array items.
 */
export interface DeepVisitor {
  /** Levels that may be reported: open for 1..levels, value for 2..levels (level 1 goes to the MemberVisitor). */
  readonly levels: number
  /**
   * Levels reported right now (1..levels), read again after each call: a reader done with the
   * current member asks for less, and a long chat history costs it nothing past its first items.
   */
  readonly wanted: number
  /** A container begins at `level`; `start` is its '{' or '['. */
  open: (level: number, keyStart: number, keyEnd: number, keyEscaped: boolean, start: number) => void
  /** A value at `level` ended. */
  value: (level: number, keyStart: number, keyEnd: number, keyEscaped: boolean, start: number, end: number) => void
}

const VALUE = 0 // a value must come
const VALUE_OR_CLOSE = 1 // after '['
const KEY_OR_CLOSE = 2 // after '{'
const KEY = 3 // after ',' inside an object
const COLON = 4
const AFTER = 5 // after a value: ',', the container's close, or the end of input at depth 0
const DONE = 6
const FAIL = 7
const STOPPED = 8 // the visitor asked to stop early

const QUOTE = 0x22
const BACKSLASH = 0x5c
const OBJECT = 0x7b
const OBJECT_END = 0x7d
const ARRAY = 0x5b
const ARRAY_END = 0x5d

/** Bytes that end a run of plain string content: the quote, the backslash and control characters. */
const STRING_STOP = new Uint8Array(256)
for (let c = 0; c < 0x20; c++) STRING_STOP[c] = 1
STRING_STOP[QUOTE] = 1
STRING_STOP[BACKSLASH] = 1
/** What may follow a backslash, besides 'u'. */
const SIMPLE_ESCAPE = new Uint8Array(256)
for (const ch of '"\\/bfnrt') SIMPLE_ESCAPE[ch.charCodeAt(0)] = 1
const HEX = new Uint8Array(256)
for (const ch of '0123456789abcdefABCDEF') HEX[ch.charCodeAt(0)] = 1

export class JsonScanner {
  /** The root's first byte ('{', '[', or another for a scalar), 0 before it is read. */
  root = 0
  /** Offset of the root container's closing byte, once read. */
  rootClose = -1
  /** Direct members of the root seen so far. */
  members = 0
  private i: number
  private state = VALUE
  private depth = 0
  /** Bit n set: level n is an object (else an array). */
  private kinds = new Uint8Array(16)
  /** Per level (index 1 up to `levels`): the key just read, and where the value begins. */
  private readonly keyStart: number[]
  private readonly keyEnd: number[]
  private readonly keyEscaped: boolean[]
  private readonly valueStart: number[]
  /** The deepest level whose keys and value starts are kept: 1, or the deep visitor's. */
  private readonly levels: number
  private words: Words | null = null

  constructor (private readonly buf: Uint8Array, from: number, private readonly to: number, private readonly visit?: MemberVisitor, private readonly deep?: DeepVisitor) {
    this.i = from
    this.levels = Math.max(1, deep?.levels ?? 1)
    // Small arrays: cheaper to make than typed ones, and a small body is scanned per request.
    this.keyStart = new Array<number>(this.levels + 1).fill(-1)
    this.keyEnd = new Array<number>(this.levels + 1).fill(-1)
    this.keyEscaped = new Array<boolean>(this.levels + 1).fill(false)
    this.valueStart = new Array<number>(this.levels + 1).fill(-1)
  }

  get done (): boolean { return this.state >= DONE }
  /** True once the whole input was read and is one valid JSON value (or the visitor stopped early). */
  get valid (): boolean { return this.state === DONE || this.state === STOPPED }
  /** Where the scan is; after a pause, how far it got. */
  get offset (): number { return this.i }

  /**
   * Reads on, at most about `budget` bytes (a token in progress is finished), and returns true
   * when the scan is over; `valid` then says how it ended.
   */
  run (budget = Infinity): boolean {
    const buf = this.buf
    const to = this.to
    const words = this.words ??= wordsOf(buf)
    forgetWindow()
    let i = this.i
    let state = this.state
    let depth = this.depth
    const levels = this.levels
    const deep = this.deep
    let deepLevels = deep === undefined ? 0 : deep.wanted
    const stop = budget >= to - i ? to : i + budget
    for (;;) {
      if (state >= DONE) break
      let c = 0
      while (i < to) {
        c = buf[i]
        if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++
        else break
      }
      if (i >= to) { state = state === AFTER && depth === 0 ? DONE : FAIL; break }
      if (i >= stop) break
      if (state === AFTER) {
        if (depth === 0) { state = FAIL; break } // something after the root value
        const inObject = this.isObject(depth - 1)
        if (c === 0x2c) { i++; state = inObject ? KEY : VALUE; continue }
        if (c !== (inObject ? OBJECT_END : ARRAY_END)) { state = FAIL; break }
        i++
        depth--
        if (depth === 1) { if (this.member(i)) { state = STOPPED; break } } else if (depth === 0) this.rootClose = i - 1
        else if (depth <= deepLevels) { this.deepValue(depth, i); deepLevels = deep!.wanted }
        continue
      }
      if (state === KEY || state === KEY_OR_CLOSE) {
        if (c === OBJECT_END && state === KEY_OR_CLOSE) {
          i++
          depth--
          state = AFTER
          if (depth === 1) { if (this.member(i)) { state = STOPPED; break } } else if (depth === 0) this.rootClose = i - 1
          else if (depth <= deepLevels) { this.deepValue(depth, i); deepLevels = deep!.wanted }
          continue
        }
        if (c !== QUOTE) { state = FAIL; break }
        const end = skipString(buf, words, i, to)
        if (end < 0) { state = FAIL; break }
        if (depth <= levels) { this.keyStart[depth] = i; this.keyEnd[depth] = end; this.keyEscaped[depth] = lastEscaped }
        i = end
        state = COLON
        continue
      }
      if (state === COLON) {
        if (c !== 0x3a) { state = FAIL; break }
        i++
        state = VALUE
        continue
      }
      // VALUE or VALUE_OR_CLOSE
      if (c === ARRAY_END && state === VALUE_OR_CLOSE) {
        i++
        depth--
        state = AFTER
        if (depth === 1) { if (this.member(i)) { state = STOPPED; break } } else if (depth === 0) this.rootClose = i - 1
        else if (depth <= deepLevels) { this.deepValue(depth, i); deepLevels = deep!.wanted }
        continue
      }
      if (depth === 0) this.root = c
      else if (depth <= levels) {
        this.valueStart[depth] = i
        if ((depth <= deepLevels || depth === 1) && deep !== undefined && (c === OBJECT || c === ARRAY)) { this.deepOpen(depth, i); deepLevels = deep.wanted }
      }
      if (c === OBJECT || c === ARRAY) {
        this.push(depth, c === OBJECT)
        depth++
        i++
        state = c === OBJECT ? KEY_OR_CLOSE : VALUE_OR_CLOSE
        continue
      }
      let end: number
      if (c === QUOTE) end = skipString(buf, words, i, to)
      else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) end = skipNumber(buf, i, to)
      else if (c === 0x74) end = literal(buf, i, to, TRUE)
      else if (c === 0x66) end = literal(buf, i, to, FALSE)
      else if (c === 0x6e) end = literal(buf, i, to, NULL)
      else end = -1
      if (end < 0) { state = FAIL; break }
      i = end
      state = AFTER
      if (depth === 1) { if (this.member(i)) { state = STOPPED; break } } else if (depth <= deepLevels && depth > 1) { this.deepValue(depth, i); deepLevels = deep!.wanted }
    }
    this.i = i
    this.state = state
    this.depth = depth
    return state >= DONE
  }

  private member (valueEnd: number): boolean {
    this.members++
    if (!this.visit) return false
    const inObject = this.isObject(0)
    return this.visit(inObject ? this.keyStart[1] : -1, inObject ? this.keyEnd[1] : -1, inObject && this.keyEscaped[1], this.valueStart[1], valueEnd) === true
  }

  private deepOpen (level: number, start: number): void {
    const inObject = this.isObject(level - 1)
    this.deep!.open(level, inObject ? this.keyStart[level] : -1, inObject ? this.keyEnd[level] : -1, inObject && this.keyEscaped[level], start)
  }

  private deepValue (level: number, valueEnd: number): void {
    const inObject = this.isObject(level - 1)
    this.deep!.value(level, inObject ? this.keyStart[level] : -1, inObject ? this.keyEnd[level] : -1, inObject && this.keyEscaped[level], this.valueStart[level], valueEnd)
  }

  private isObject (level: number): boolean {
    return (this.kinds[level >>> 3] & (1 << (level & 7))) !== 0
  }

  private push (level: number, object: boolean): void {
    const byte = level >>> 3
    if (byte >= this.kinds.length) {
      const grown = new Uint8Array(this.kinds.length * 2)
      grown.set(this.kinds)
      this.kinds = grown
    }
    if (object) this.kinds[byte] |= 1 << (level & 7)
    else this.kinds[byte] &= ~(1 << (level & 7))
  }
}

/** Set by skipString: whether the string just skipped holds a backslash escape. */
let lastEscaped = false

/**
 * The buffer as 32-bit words, for skipping plain string content four bytes at a time: a base64
 * image is megabytes of one string, and a byte loop is most of the scan's cost there.
 */
export interface Words { w32: Uint32Array, base: number }

export function wordsOf (buf: Uint8Array): Words {
  const first = (4 - (buf.byteOffset & 3)) & 3
  const n = buf.length > first ? (buf.length - first) >>> 2 : 0
  return { w32: new Uint32Array(buf.buffer, buf.byteOffset + first, n), base: first }
}

/** The first offset from j on (before `to`) holding a quote, a backslash or a control character. */
function plainEnd (buf: Uint8Array, words: Words, j: number, to: number): number {
  if (to - j >= 16) {
    while (((j - words.base) & 3) !== 0) { if (STRING_STOP[buf[j]] === 1) return j; j++ }
    const w32 = words.w32
    let k = (j - words.base) >>> 2
    const end = (to - words.base) >>> 2
    for (; k < end; k++) {
      const w = w32[k]
      const q = w ^ 0x22222222
      const b = w ^ 0x5c5c5c5c
      // Per byte: below 0x20, or equal to '"' or '\\' (exact as to whether any byte is; the byte loop finds which).
      if ((((w - 0x20202020) & ~w) | ((q - 0x01010101) & ~q) | ((b - 0x01010101) & ~b)) & 0x80808080) break
    }
    j = words.base + k * 4
  }
  while (j < to && STRING_STOP[buf[j]] === 0) j++
  return j
}

/** Strings not ended this many bytes in go on in the SIMD loop; for a key or a role the call costs more than it saves. */
const SHORT = 128

/** From the opening quote at i to just past the closing one, or -1. */
export function skipString (buf: Uint8Array, words: Words, i: number, to: number): number {
  let j = i + 1
  lastEscaped = false
  if (to - j > SHORT && simdStrings()) {
    const short = j + SHORT
    while (j < short && STRING_STOP[buf[j]] === 0) j++
    if (buf[j] === QUOTE) return j + 1
    const end = skipRest(buf, j, to)
    lastEscaped = restEscaped
    return end
  }
  for (;;) {
    j = plainEnd(buf, words, j, to)
    if (j >= to) return -1
    const c = buf[j]
    if (c === QUOTE) return j + 1
    if (c !== BACKSLASH) return -1 // a raw control character
    lastEscaped = true
    if (j + 1 >= to) return -1
    const e = buf[j + 1]
    if (e === 0x75) {
      if (j + 5 >= to || HEX[buf[j + 2]] === 0 || HEX[buf[j + 3]] === 0 || HEX[buf[j + 4]] === 0 || HEX[buf[j + 5]] === 0) return -1
      j += 6
    } else if (SIMPLE_ESCAPE[e] === 1) {
      j += 2
    } else {
      return -1
    }
  }
}

/** A number in JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
function skipNumber (buf: Uint8Array, i: number, to: number): number {
  let j = i
  if (buf[j] === 0x2d) j++
  if (j >= to) return -1
  const first = buf[j]
  if (first === 0x30) j++
  else if (first >= 0x31 && first <= 0x39) { j++; while (j < to && isDigit(buf[j])) j++ } else return -1
  if (j < to && buf[j] === 0x2e) {
    const s = ++j
    while (j < to && isDigit(buf[j])) j++
    if (j === s) return -1
  }
  if (j < to && (buf[j] === 0x65 || buf[j] === 0x45)) {
    j++
    if (j < to && (buf[j] === 0x2b || buf[j] === 0x2d)) j++
    const s = j
    while (j < to && isDigit(buf[j])) j++
    if (j === s) return -1
  }
  return j
}

function isDigit (c: number): boolean { return c >= 0x30 && c <= 0x39 }

const TRUE = [0x74, 0x72, 0x75, 0x65]
const FALSE = [0x66, 0x61, 0x6c, 0x73, 0x65]
const NULL = [0x6e, 0x75, 0x6c, 0x6c]

function literal (buf: Uint8Array, i: number, to: number, word: number[]): number {
  if (i + word.length > to) return -1
  for (let k = 1; k < word.length; k++) if (buf[i + k] !== word[k]) return -1
  return i + word.length
}
