// A pure Server-Sent Events tokenizer: bytes in, events out. It works on Buffers and splits only
// at line ends (0x0A / 0x0D), so a multi-byte UTF-8 character cut between two reads is never
// decoded half-way, and it does not decode or parse anything it is not asked for: the caller gets
// each event's data as bytes and decides cheaply whether it is worth a JSON.parse.

export interface SseEvent {
  /** The `event:` field, or undefined for the default "message" event. */
  type: string | undefined
  /** The data lines of the event joined with "\n", as raw bytes. */
  data: Buffer
}

const LF = 0x0a
const CR = 0x0d
const COLON = 0x3a
const SPACE = 0x20
const EMPTY = Buffer.alloc(0)

export class SseScanner {
  private carry: Buffer = EMPTY
  private skipLf = false // the previous read ended on CR: a LF opening this one belongs to it
  private dataParts: Buffer[] = []
  private type: string | undefined
  private hasData = false

  constructor (private readonly onEvent: (event: SseEvent) => void) {}

  push (chunk: Buffer): void {
    let buf = chunk
    if (this.skipLf) {
      this.skipLf = false
      if (buf.length > 0 && buf[0] === LF) buf = buf.subarray(1)
    }
    if (this.carry.length > 0) {
      buf = Buffer.concat([this.carry, buf])
      this.carry = EMPTY
    }
    let start = 0
    const n = buf.length
    // CR alone also ends a line (the spec allows it); look for it only when the read has one.
    let hasCr = buf.indexOf(CR) !== -1
    while (start < n) {
      const lf = buf.indexOf(LF, start)
      const cr = hasCr ? buf.indexOf(CR, start) : -1
      if (cr === -1) hasCr = false
      let end: number
      let next: number
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        end = cr
        if (cr + 1 < n) next = buf[cr + 1] === LF ? cr + 2 : cr + 1
        else { next = n; this.skipLf = true }
      } else if (lf !== -1) {
        end = lf
        next = lf + 1
      } else {
        break
      }
      this.line(buf, start, end)
      start = next
    }
    // Copy what outlives this call: the caller owns its buffer and may reuse it.
    if (start < n) this.carry = Buffer.from(buf.subarray(start))
    for (let i = 0; i < this.dataParts.length; i++) {
      if (this.dataParts[i].buffer === buf.buffer) this.dataParts[i] = Buffer.from(this.dataParts[i])
    }
  }

  /** The stream ended: a final event not followed by a blank line is still delivered. */
  end (): void {
    if (this.carry.length > 0) {
      const rest = this.carry
      this.carry = EMPTY
      this.line(rest, 0, rest.length)
    }
    this.dispatch()
  }

  private line (buf: Buffer, start: number, end: number): void {
    if (start === end) { this.dispatch(); return }
    if (buf[start] === COLON) return // comment, e.g. ": OPENROUTER PROCESSING"
    const colon = buf.indexOf(COLON, start)
    let fieldEnd = end
    let valueStart = end
    if (colon !== -1 && colon < end) {
      fieldEnd = colon
      valueStart = colon + 1
      if (valueStart < end && buf[valueStart] === SPACE) valueStart++
    }
    // Field names compared as bytes: no string is made for a line that is not kept.
    const len = fieldEnd - start
    if (len === 4 && buf[start] === 0x64 && buf[start + 1] === 0x61 && buf[start + 2] === 0x74 && buf[start + 3] === 0x61) { // data
      this.dataParts.push(buf.subarray(valueStart, end))
      this.hasData = true
    } else if (len === 5 && buf[start] === 0x65 && buf[start + 1] === 0x76 && buf[start + 2] === 0x65 && buf[start + 3] === 0x6e && buf[start + 4] === 0x74) { // event
      this.type = buf.toString('utf8', valueStart, end)
    }
    // id: and retry: carry nothing the meter needs.
  }

  private dispatch (): void {
    if (!this.hasData) { this.type = undefined; return }
    const parts = this.dataParts
    let data: Buffer
    if (parts.length === 1) data = parts[0]
    else {
      const joined: Buffer[] = []
      for (let i = 0; i < parts.length; i++) { if (i > 0) joined.push(Buffer.from('\n')); joined.push(parts[i]) }
      data = Buffer.concat(joined)
    }
    const type = this.type
    this.dataParts.length = 0
    this.hasData = false
    this.type = undefined
    this.onEvent({ type, data })
  }
}
