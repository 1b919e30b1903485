// JSON string values decoded from the bytes the scanner (json-scan.ts) already validated, with a
// bound on how much is read: the request path never hands client bytes to JSON.parse, whose cost
// has no bound the sidecar chooses. A long string costs at most `maxBytes` of work here, however
// many escapes it holds.

const HEX = new Int8Array(256).fill(-1)
for (let d = 0; d < 16; d++) HEX['0123456789abcdef'.charCodeAt(d)] = HEX['0123456789ABCDEF'.charCodeAt(d)] = d

/** What each simple escape stands for, by the byte after the backslash. */
const SIMPLE: Record<number, string> = { 0x22: '"', 0x5c: '\\', 0x2f: '/', 0x62: '\b', 0x66: '\f', 0x6e: '\n', 0x72: '\r', 0x74: '\t' }

/**
 * The string whose quoted bytes are [start, end) of valid JSON, decoded as JSON.parse decodes it,
 * or its beginning when the content is longer than `maxBytes` bytes: then it ends at the last
 * whole character and whole escape within them (a surrogate pair cut in two keeps its first half).
 */
export function decodeJsonString (bytes: Uint8Array, start: number, end: number, maxBytes = Infinity): string {
  const from = start + 1
  const contentEnd = end - 1
  const cut = contentEnd - from > maxBytes
  let to = cut ? from + maxBytes : contentEnd
  // Never inside a UTF-8 sequence: back to the first byte of the character the cut falls in.
  if (cut) while (to > from && (bytes[to] & 0xc0) === 0x80) to--
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
  let out = ''
  let i = from
  while (i < to) {
    let j = i
    while (j < to && bytes[j] !== 0x5c) j++
    if (j > i) out += buf.toString('utf8', i, j)
    if (j >= to) break
    const e = bytes[j + 1]
    if (e === 0x75) {
      if (j + 6 > to) break
      out += String.fromCharCode((HEX[bytes[j + 2]] << 12) | (HEX[bytes[j + 3]] << 8) | (HEX[bytes[j + 4]] << 4) | HEX[bytes[j + 5]])
      i = j + 6
    } else {
      if (j + 2 > to) break
      out += SIMPLE[e]
      i = j + 2
    }
  }
  return out
}

/**
 * Whether the quoted bytes [start, end) are the JSON string `name` (ASCII), escapes decoded. A
 * key far longer than the name is not read at all.
 */
export function isJsonString (bytes: Uint8Array, start: number, end: number, escaped: boolean, name: string): boolean {
  const n = end - start - 2
  if (!escaped) {
    if (n !== name.length) return false
    for (let k = 0; k < n; k++) if (bytes[start + 1 + k] !== name.charCodeAt(k)) return false
    return true
  }
  // Each character is at most one 6-byte escape.
  return n <= 6 * name.length && decodeJsonString(bytes, start, end) === name
}
