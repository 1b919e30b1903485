// What a request body will cost in prompt tokens and media, read in one pass over its bytes with
// no parsing: the budgets' estimate needs an upper bound, cheaply, only when a budget applies.
//
// Text (everything that is not media, JSON punctuation and keys included) is counted so that
// real tokenizers never count more (test/estimate-corpus.test.ts checks cl100k and o200k):
// - every byte of a non-ASCII character is a token: a byte-level tokenizer's token is at least
//   one byte, so no script, rare ideograph, emoji or stack of combining marks can exceed it;
//   a \uXXXX escape is 3 tokens (the UTF-8 bytes of one UTF-16 unit at most);
// - ASCII follows the tokenizers' pre-split: each run of letters, digits or punctuation starts a
//   token (a single space joins the word after it); within letters, each consonant after a
//   consonant, vowel after a vowel and lower-to-upper change costs another (words people write
//   alternate, random letters do not); digits cost one per three; punctuation three per four;
//   whitespace runs one, plus one per four.
// Media are counted, not tokenized as text: an image (image_url's url, a Responses image_url), an
// audio clip (input_audio's data) and a file (file_data, Anthropic's source data), when they sit
// under the body's `messages` or `input`; their base64 is skipped with indexOf. A body that is
// not JSON (a multipart upload) is one file.

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

// Byte classes of ASCII.
const LOWER = 1
const UPPER = 2
const DIGIT = 3
const SPACE = 4
const PUNCT = 5
const OTHER = 6 // non-ASCII, escapes
const CLASS = new Uint8Array(128)
const VOWEL = new Uint8Array(128)
for (let b = 0; b < 128; b++) {
  CLASS[b] = b >= 0x61 && b <= 0x7a ? LOWER : b >= 0x41 && b <= 0x5a ? UPPER : b >= 0x30 && b <= 0x39 ? DIGIT
    : b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d ? SPACE : PUNCT
}
for (const c of 'aeiouyAEIOUY') VOWEL[c.charCodeAt(0)] = 1

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

/** Counts of a request body (see the top of this file). Never throws, whatever the bytes. */
export function countPrompt (body: Buffer): PromptCounts {
  const counts: PromptCounts = { textTokens: 0, images: 0, audioBytes: 0, files: 0, fileBytes: 0, cacheWrite: false }
  let i = 0
  const n = body.length
  while (i < n && CLASS[body[i]] === SPACE) i++
  if (i < n && body[i] !== 0x7b) { counts.files = 1; counts.fileBytes = n; return counts }

  const text = new TextCounter()
  // Per open container: the key it is the value of (an array's elements inherit it), and whether
  // it is an object. Deeper than MAX_DEPTH nothing is tracked and every string is text.
  const keyOf = new Uint8Array(MAX_DEPTH + 1)
  const isObject = new Uint8Array(MAX_DEPTH + 1)
  let depth = 0
  let section = K_OTHER // the top-level key the current value is under
  let key = K_OTHER // the key whose value comes next
  let expectKey = false
  while (i < n) {
    const b = body[i]
    if (b === QUOTE) {
      const start = i + 1
      const tracked = depth > 0 && depth <= MAX_DEPTH
      if (tracked && expectKey) {
        const end = text.string(body, start)
        key = end - start <= MAX_KEY ? KEYS.get(body.toString('latin1', start, end)) ?? K_OTHER : K_OTHER
        if (key === K_CACHE_CONTROL) counts.cacheWrite = true
        if (depth === 1) section = key
        expectKey = false
        i = end + 1
        continue
      }
      const kind = tracked && (section === K_MESSAGES || section === K_INPUT) ? mediaKind(key, keyOf[depth]) : 0
      if (kind === 0) { i = text.string(body, start) + 1; continue }
      const end = stringEnd(body, start)
      addMedia(counts, kind, body, start, end)
      i = end + 1
      continue
    }
    if (b === 0x7b || b === 0x5b) { // { [
      depth++
      if (depth <= MAX_DEPTH) { keyOf[depth] = key; isObject[depth] = b === 0x7b ? 1 : 0 }
      expectKey = b === 0x7b
      if (b === 0x7b) key = K_OTHER
    } else if (b === 0x7d || b === 0x5d) { // } ]
      if (depth > 0) depth--
      if (depth === 0) section = K_OTHER
      key = depth > 0 && depth <= MAX_DEPTH && isObject[depth] === 0 ? keyOf[depth] : K_OTHER
      expectKey = false
    } else if (b === 0x2c) { // ,
      const inObject = depth > 0 && depth <= MAX_DEPTH && isObject[depth] === 1
      expectKey = inObject
      key = inObject || depth === 0 || depth > MAX_DEPTH ? K_OTHER : keyOf[depth]
    }
    text.byte(b)
    i++
  }
  counts.textTokens = text.total()
  return counts
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
  const comma = body.indexOf(0x2c, start)
  const from = comma >= 0 && comma < end && body[start] === 0x64 /* d */ ? comma + 1 : start
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

/** Tokens of text, in quarters, fed byte by byte (see the top of this file for the rules). */
class TextCounter {
  private quarters = 0
  private prev = OTHER
  private prevVowel = 0
  private run = 0 // bytes in the current run of prev's class
  private pendingSpace = false // a single space that joins what follows unless that is a digit

  total (): number {
    this.flushSpace(OTHER)
    return Math.ceil(this.quarters / 4)
  }

  /** Counts a string's content from `start`; returns the index of its closing quote. */
  string (body: Buffer, start: number): number {
    let i = start
    const n = body.length
    while (i < n) {
      const b = body[i]
      if (b === QUOTE) return i
      if (b === BACKSLASH && i + 1 < n) {
        const e = body[i + 1]
        if (e === 0x75 /* u */) { this.other(12); i += 6; continue }
        this.byte(e === 0x6e || e === 0x74 || e === 0x72 ? 0x0a : e === 0x2f || e === BACKSLASH || e === QUOTE ? e : 0x21)
        i += 2
        continue
      }
      this.byte(b)
      i++
    }
    return n
  }

  private other (quarters: number): void {
    this.flushSpace(OTHER)
    this.quarters += quarters
    this.prev = OTHER
    this.run = 0
  }

  private flushSpace (next: number): void {
    if (!this.pendingSpace) return
    this.pendingSpace = false
    // A lone space joins the letters or punctuation after it; before anything else it is a token.
    if (next !== LOWER && next !== UPPER && next !== PUNCT) this.quarters += 4
  }

  byte (b: number): void {
    if (b >= 0x80) { this.other(4); return }
    const c = CLASS[b]
    if (c === SPACE) {
      if (this.prev === SPACE) {
        if (this.pendingSpace) { this.pendingSpace = false; this.quarters += 4 } // a run: one token...
        this.run++
        if ((this.run & 3) === 0) this.quarters += 4 // ...plus one per four
        return
      }
      this.prev = SPACE
      this.run = 1
      if (b === 0x20) this.pendingSpace = true
      else this.quarters += 4
      return
    }
    this.flushSpace(c)
    const sameRun = c === this.prev || (c === LOWER && this.prev === UPPER) || (c === UPPER && this.prev === LOWER)
    if (!sameRun) {
      this.quarters += 4
      this.prev = c
      this.run = 1
      this.prevVowel = VOWEL[b]
      return
    }
    this.run++
    if (c === DIGIT) {
      if (this.run % 3 === 1) this.quarters += 4
    } else if (c === PUNCT) {
      this.quarters += 3
    } else {
      const v = VOWEL[b]
      if (v === this.prevVowel || (c === UPPER && this.prev === LOWER)) this.quarters += 4
      this.prevVowel = v
      this.prev = c
    }
  }
}
