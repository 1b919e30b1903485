// What a request body will cost in prompt tokens and media, read in one pass over its bytes with
// no parsing: the budgets' estimate needs an upper bound, cheaply, only when a budget applies.
//
// Text (everything that is not media, JSON punctuation and keys included) is counted so that
// real tokenizers never count more (test/estimate-corpus.test.ts checks cl100k and o200k):
// - every byte of a non-ASCII character is a token: a byte-level tokenizer's token is at least
//   one byte, so no script, rare ideograph, emoji or stack of combining marks can exceed it;
//   a \uXXXX escape is 3 tokens (the UTF-8 bytes of one UTF-16 unit at most);
// - ASCII follows the tokenizers' pre-split: each run of letters, digits or punctuation starts a
//   token (a single space joins the letters or punctuation after it); within letters, each
//   consonant after a consonant, vowel after a vowel and lower-to-upper change costs another
//   (words people write alternate, random letters do not); digits cost a third each after the
//   first, punctuation three quarters, whitespace in a run a quarter.
// The rules are a table from (previous byte's class, this byte's class) to a cost, so the pass is
// one lookup per byte.
// Media are counted, not tokenized as text: an image (image_url's url, a Responses image_url), an
// audio clip (input_audio's data) and a file (file_data, Anthropic's source data), when they sit
// under the body's `messages` or `input`; their base64 is skipped with indexOf. A body that is
// not JSON (a multipart upload: audio to transcribe, images to edit) counts as audio, every byte.

export interface PromptCounts {
  /** Upper bound of the text's tokens. */
  textTokens: number
  /** Images, inline or by URL. */
  images: number
  /** Decoded bytes of inline audio. */
  audioBytes: number
  /** Files (PDFs and others), and their decoded bytes. */
  files: number
  fileBytes: number
  /** The body asks for prompt caching (cache_control): tokens may be billed at the cache-write price. */
  cacheWrite: boolean
}

const QUOTE = 0x22
const BACKSLASH = 0x5c
const WHITESPACE = new Set([0x20, 0x09, 0x0a, 0x0d])

// Keys that matter. A key's id is looked up only for short keys.
const K_OTHER = 0
const K_MESSAGES = 1
const K_INPUT = 2
const K_URL = 3
const K_IMAGE_URL = 4
const K_DATA = 5
const K_FILE_DATA = 6
const K_INPUT_AUDIO = 7
const K_SOURCE = 8
const K_CACHE_CONTROL = 9
const KEYS = new Map<string, number>([
  ['messages', K_MESSAGES], ['input', K_INPUT], ['url', K_URL], ['image_url', K_IMAGE_URL], ['data', K_DATA],
  ['file_data', K_FILE_DATA], ['input_audio', K_INPUT_AUDIO], ['source', K_SOURCE], ['cache_control', K_CACHE_CONTROL],
])
const MAX_KEY = 13
/** Containers nested deeper than this are still counted, as text. */
const MAX_DEPTH = 64

const IMAGE = 1
const AUDIO = 2
const FILE = 3

/** Counts of a request body (see the top of this file), at once. Never throws, whatever the bytes. */
export function countPrompt (body: Buffer): PromptCounts {
  const counter = new PromptCounter(body)
  counter.step(body.length)
  return counter.counts
}

/** Bytes counted per event-loop turn by countPromptSliced: about a millisecond of work. */
export const COUNT_SLICE_BYTES = 256 * 1024

/** The same, a slice per event-loop turn, so that a large body delays nobody else. */
export function countPromptSliced (body: Buffer, sliceBytes = COUNT_SLICE_BYTES): Promise<PromptCounts> {
  const counter = new PromptCounter(body)
  if (counter.step(sliceBytes)) return Promise.resolve(counter.counts)
  return new Promise((resolve) => {
    const next = (): void => { if (counter.step(sliceBytes)) resolve(counter.counts); else setImmediate(next) }
    setImmediate(next)
  })
}

/** The pass itself, resumable: step() reads about `maxBytes` more (a media string at once, by indexOf). */
export class PromptCounter {
  readonly counts: PromptCounts = { textTokens: 0, images: 0, audioBytes: 0, files: 0, fileBytes: 0, cacheWrite: false }
  private readonly text = new TextCounter()
  private i = 0
  private done = false
  // Per open container: the key it is the value of (an array's elements inherit it), and whether
  // it is an object. Deeper than MAX_DEPTH nothing is tracked and every string is text.
  private readonly keyOf = new Uint8Array(MAX_DEPTH + 1)
  private readonly isObject = new Uint8Array(MAX_DEPTH + 1)
  private depth = 0
  private section = K_OTHER // the top-level key the current value is under
  private key = K_OTHER // the key whose value comes next
  private expectKey = false
  /** Inside a string cut by a slice: where it started, and whether it is a key. */
  private stringStart = -1
  private inKey = false

  constructor (private readonly body: Buffer) {
    let i = 0
    while (i < body.length && WHITESPACE.has(body[i])) i++
    // Not JSON (a multipart upload): audio, or images, whose tokens audio's rate bounds too.
    if (i < body.length && body[i] !== 0x7b) {
      this.counts.audioBytes = body.length
      this.done = true
    }
    this.i = i
  }

  /** Reads on; true once the whole body is counted. */
  step (maxBytes: number): boolean {
    if (this.done) return true
    const body = this.body
    const n = body.length
    const stop = Math.min(n, this.i + Math.max(1, maxBytes))
    const text = this.text
    const keyOf = this.keyOf
    const isObject = this.isObject
    let i = this.i
    while (i < stop) {
      if (this.stringStart >= 0) {
        const end = text.string(body, i, stop)
        if (!text.closed) { i = end; break }
        this.endString(this.stringStart, end)
        i = end + 1
        continue
      }
      const b = body[i]
      if (b === QUOTE) {
        const start = i + 1
        const tracked = this.depth > 0 && this.depth <= MAX_DEPTH
        const kind = tracked && !this.expectKey && (this.section === K_MESSAGES || this.section === K_INPUT) ? mediaKind(this.key, keyOf[this.depth]) : 0
        if (kind !== 0) {
          const end = stringEnd(body, start)
          addMedia(this.counts, kind, body, start, end)
          i = end + 1
          continue
        }
        this.stringStart = start
        this.inKey = tracked && this.expectKey
        i = start
        continue
      }
      const depth = this.depth
      if (b === 0x7b || b === 0x5b) { // { [
        this.depth = depth + 1
        if (depth + 1 <= MAX_DEPTH) { keyOf[depth + 1] = this.key; isObject[depth + 1] = b === 0x7b ? 1 : 0 }
        this.expectKey = b === 0x7b
        if (b === 0x7b) this.key = K_OTHER
      } else if (b === 0x7d || b === 0x5d) { // } ]
        const d = depth > 0 ? depth - 1 : 0
        this.depth = d
        if (d === 0) this.section = K_OTHER
        this.key = d > 0 && d <= MAX_DEPTH && isObject[d] === 0 ? keyOf[d] : K_OTHER
        this.expectKey = false
      } else if (b === 0x2c) { // ,
        const inObject = depth > 0 && depth <= MAX_DEPTH && isObject[depth] === 1
        this.expectKey = inObject
        this.key = inObject || depth === 0 || depth > MAX_DEPTH ? K_OTHER : keyOf[depth]
      }
      text.byte(b)
      i++
    }
    this.i = i
    if (i < n) return false
    this.done = true
    this.counts.textTokens = text.total()
    return true
  }

  /** A string closed at `end`: a key sets what the next value is. */
  private endString (start: number, end: number): void {
    this.stringStart = -1
    if (!this.inKey) return
    this.inKey = false
    this.expectKey = false
    const key = end - start <= MAX_KEY ? KEYS.get(this.body.toString('latin1', start, end)) ?? K_OTHER : K_OTHER
    this.key = key
    if (key === K_CACHE_CONTROL) this.counts.cacheWrite = true
    if (this.depth === 1) this.section = key
  }
}

/** What a string value is, from its key and the key of the object it sits in. */
function mediaKind (key: number, parent: number): number {
  if (key === K_IMAGE_URL) return IMAGE
  if (key === K_URL && parent === K_IMAGE_URL) return IMAGE
  if (key === K_DATA && parent === K_INPUT_AUDIO) return AUDIO
  if (key === K_FILE_DATA) return FILE
  if (key === K_DATA && parent === K_SOURCE) return FILE
  return 0
}

function addMedia (counts: PromptCounts, kind: number, body: Buffer, start: number, end: number): void {
  if (kind === IMAGE) { counts.images++; return }
  // Base64 (after a data: URL's comma) decodes to 3 bytes per 4.
  const comma = body[start] === 0x64 /* d */ ? body.indexOf(0x2c, start) : -1
  const from = comma >= 0 && comma < end ? comma + 1 : start
  const bytes = Math.ceil((end - from) * 3 / 4)
  if (kind === AUDIO) counts.audioBytes += bytes
  else { counts.files++; counts.fileBytes += bytes }
}

/** Index of the quote closing a string that starts at `start` (or the body's end). */
function stringEnd (body: Buffer, start: number): number {
  let at = start
  for (;;) {
    const q = body.indexOf(QUOTE, at)
    if (q < 0) return body.length
    let slashes = 0
    while (q - 1 - slashes >= start && body[q - 1 - slashes] === BACKSLASH) slashes++
    if ((slashes & 1) === 0) return q
    at = q + 1
  }
}

// Classes of bytes, and the states of the counter (a class, or one of the two extra states).
const LOWER_VOWEL = 0
const LOWER_CONSONANT = 1
const UPPER_VOWEL = 2
const UPPER_CONSONANT = 3
const DIGIT = 4
const SPACE = 5 // ' ', alone so far
const BREAK = 6 // \t \n \r
const PUNCT = 7
const HIGH = 8 // a byte of a non-ASCII character
const RUN = 9 // state: inside a run of whitespace
const START = 10 // state: nothing before, or an escaped character
const STATES = 11
const CLASSES = 9
/** Costs are in twelfths of a token: a third and a quarter are whole numbers. */
const T = 12

const CLASS_OF = new Uint8Array(256)
for (let b = 0; b < 256; b++) {
  const ch = String.fromCharCode(b)
  CLASS_OF[b] = b >= 0x80 ? HIGH
    : /[a-z]/.test(ch) ? ('aeiouy'.includes(ch) ? LOWER_VOWEL : LOWER_CONSONANT)
      : /[A-Z]/.test(ch) ? ('AEIOUY'.includes(ch) ? UPPER_VOWEL : UPPER_CONSONANT)
        : /[0-9]/.test(ch) ? DIGIT : b === 0x20 ? SPACE : b === 0x09 || b === 0x0a || b === 0x0d ? BREAK : PUNCT
}

/** By state × CLASSES + class: the cost << 8 | the next state × CLASSES. */
const STEP = new Uint16Array(STATES * CLASSES)
const isLetter = (c: number): boolean => c <= UPPER_CONSONANT
const isVowel = (c: number): boolean => c === LOWER_VOWEL || c === UPPER_VOWEL
for (let prev = 0; prev < STATES; prev++) {
  for (let c = 0; c < CLASSES; c++) {
    let cost: number
    // A lone space joins the letters or punctuation after it; before anything else it is a token.
    const space = prev === SPACE && !isLetter(c) && c !== PUNCT && c !== SPACE && c !== BREAK ? T : 0
    if (isLetter(c)) {
      cost = !isLetter(prev) || isVowel(c) === isVowel(prev) || (c >= UPPER_VOWEL && prev <= LOWER_CONSONANT) ? T : 0
    } else if (c === DIGIT) {
      cost = prev === DIGIT ? T / 3 : T
    } else if (c === PUNCT) {
      cost = prev === PUNCT ? T * 3 / 4 : T
    } else if (c === SPACE || c === BREAK) {
      // Whitespace: a run is one token, plus a quarter for each character after the first two.
      cost = prev === SPACE ? T : prev === RUN || prev === BREAK ? T / 4 : c === BREAK ? T : 0
    } else {
      cost = T
    }
    const next = (c === SPACE || c === BREAK) && (prev === SPACE || prev === BREAK || prev === RUN) ? RUN : c
    STEP[prev * CLASSES + c] = (cost + space) << 8 | next * CLASSES
  }
}

/** Tokens of text, in twelfths, by the table above: strings' contents and the bytes between them. */
class TextCounter {
  private sum = 0
  private prev = START * CLASSES // states are kept multiplied by CLASSES
  /** Whether the last string() call reached the closing quote. */
  closed = false

  total (): number {
    return Math.ceil((this.sum + (this.prev === SPACE * CLASSES ? T : 0)) / T)
  }

  /** One byte outside strings. */
  byte (b: number): void {
    const step = STEP[this.prev + CLASS_OF[b]]
    this.sum += step >> 8
    this.prev = step & 0xff
  }

  /**
   * Counts a string's content from `start` up to `stop`; returns the index of its closing quote
   * (then `closed`), or where it stopped (at or past `stop`: an escape is read whole).
   */
  string (body: Buffer, start: number, stop: number): number {
    let sum = this.sum
    let prev = this.prev
    let i = start
    const n = body.length
    this.closed = false
    for (; i < stop; i++) {
      let b = body[i]
      if (b === QUOTE || b === BACKSLASH) { // both are punctuation: one test for the common case
        if (b === QUOTE) { this.closed = true; break }
        if (i + 1 < n) {
          const e = body[++i]
          if (e === 0x75 /* u */) {
            // One UTF-16 unit: at most 3 bytes of UTF-8, so at most 3 tokens.
            sum += 3 * T + (prev === SPACE * CLASSES ? T : 0)
            prev = START * CLASSES
            i += 4
            continue
          }
          b = e === 0x6e || e === 0x74 || e === 0x72 ? 0x0a : e === QUOTE || e === BACKSLASH || e === 0x2f ? e : 0x21
        }
      }
      const step = STEP[prev + CLASS_OF[b]]
      sum += step >> 8
      prev = step & 0xff
    }
    this.sum = sum
    this.prev = prev
    return this.closed ? i : Math.min(i, n)
  }
}
