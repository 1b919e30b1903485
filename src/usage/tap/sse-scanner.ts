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
const DATA = Buffer.from('data')

/**
 * The most bytes one event (or one line) is buffered for. The meter needs small events only (the
 * first one, usage, errors); a larger one (a 150 MB line) is skipped: its bytes still reach the
 * client, and its end is still found, but it is neither kept nor parsed, so work stays linear.
 */
export const MAX_EVENT_BYTES = 4 * 1024 * 1024

export class SseScanner {
  /** Pieces of a line not ended yet (copies: the caller may reuse its buffers). */
  private lineParts: Buffer[] = []
  private lineBytes = 0
  /** The line being carried passed the cap: its bytes are dropped until it ends. */
  private lineTooLong = false
  private skipLf = false // the previous read ended on CR: a LF opening this one belongs to it
  private dataParts: Buffer[] = []
  private dataBytes = 0
  private eventTooLarge = false
  private type: string | undefined
  private hasData = false
  /** Bytes examined or copied so far: at most a small constant times the bytes pushed. */
  work = 0
  /** Events skipped for being larger than the cap. */
  oversized = 0

  constructor (private readonly onEvent: (event: SseEvent) => void, private readonly maxEventBytes = MAX_EVENT_BYTES) {}

  /** Bytes held between reads: bounded by about twice the cap, whatever the input. */
  get buffered (): number { return this.lineBytes + this.dataBytes }

  push (chunk: Buffer): void {
    let buf = chunk
    if (this.skipLf) {
      this.skipLf = false
      if (buf.length > 0 && buf[0] === LF) buf = buf.subarray(1)
    }
    let start = 0
    const n = buf.length
    // Each search resumes where the last match was: every byte is looked at once per kind of
    // line end, however the lines fall into reads.
    let lf = -2
    let cr = -2
    while (start < n) {
      if (lf !== -1 && lf < start) { lf = buf.indexOf(LF, start); this.work += (lf === -1 ? n : lf) - start }
      if (cr !== -1 && cr < start) { cr = buf.indexOf(CR, start); this.work += (cr === -1 ? n : cr) - start }
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
      if (this.lineBytes > 0 || this.lineTooLong) this.carriedLine(buf.subarray(start, end))
      else this.line(buf, start, end)
      start = next
    }
    if (start < n) this.carry(buf.subarray(start))
    // Data kept from this read must outlive it: the caller owns its buffer and may reuse it.
    for (let i = 0; i < this.dataParts.length; i++) {
      if (this.dataParts[i].buffer === chunk.buffer) this.dataParts[i] = Buffer.from(this.dataParts[i])
    }
  }

  /** The stream ended: a final event not followed by a blank line is still delivered. */
  end (): void {
    if (this.lineBytes > 0 || this.lineTooLong) this.carriedLine(Buffer.alloc(0))
    this.dispatch()
  }

  private carry (rest: Buffer): void {
    if (this.lineTooLong) return
    if (this.lineBytes + rest.length > this.maxEventBytes) { this.tooLong(rest); return }
    this.lineParts.push(Buffer.from(rest))
    this.lineBytes += rest.length
    this.work += rest.length
  }

  /** A line that began in an earlier read ends with `tail`. */
  private carriedLine (tail: Buffer): void {
    if (!this.lineTooLong && this.lineBytes + tail.length > this.maxEventBytes) this.tooLong(tail)
    if (this.lineTooLong) { this.lineTooLong = false; return }
    const whole = Buffer.concat([...this.lineParts, tail], this.lineBytes + tail.length)
    this.work += whole.length
    this.lineParts = []
    this.lineBytes = 0
    this.line(whole, 0, whole.length)
  }

  /** The carried line outgrew the cap: drop it; if it was a data line, its event is skipped. */
  private tooLong (more: Buffer): void {
    const head = Buffer.concat([...this.lineParts, more.subarray(0, 5)]).subarray(0, 5)
    if (head.subarray(0, 4).equals(DATA) && (head.length === 4 || head[4] === COLON)) this.skipEvent()
    this.lineParts = []
    this.lineBytes = 0
    this.lineTooLong = true
  }

  private skipEvent (): void {
    this.eventTooLarge = true
    this.hasData = true
    this.dataParts.length = 0
    this.dataBytes = 0
  }

  private line (buf: Buffer, start: number, end: number): void {
    if (start === end) { this.dispatch(); return }
    if (buf[start] === COLON) return // comment, e.g. ": OPENROUTER PROCESSING"
    // The field names the meter reads are at most 5 bytes: look no further for the colon.
    let colon = -1
    for (let i = start; i < end && i <= start + 5; i++) if (buf[i] === COLON) { colon = i; break }
    let fieldEnd = end
    let valueStart = end
    if (colon !== -1) {
      fieldEnd = colon
      valueStart = colon + 1
      if (valueStart < end && buf[valueStart] === SPACE) valueStart++
    } else if (end - start > 5) {
      return // a field name longer than any the meter reads
    }
    // Field names compared as bytes: no string is made for a line that is not kept.
    const len = fieldEnd - start
    if (len === 4 && buf[start] === 0x64 && buf[start + 1] === 0x61 && buf[start + 2] === 0x74 && buf[start + 3] === 0x61) { // data
      if (this.eventTooLarge) return
      this.dataBytes += end - valueStart
      if (this.dataBytes > this.maxEventBytes) { this.skipEvent(); return }
      this.dataParts.push(buf.subarray(valueStart, end))
      this.hasData = true
    } else if (len === 5 && buf[start] === 0x65 && buf[start + 1] === 0x76 && buf[start + 2] === 0x65 && buf[start + 3] === 0x6e && buf[start + 4] === 0x74) { // event
      this.type = buf.toString('utf8', valueStart, Math.min(end, valueStart + 256))
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
    const skipped = this.eventTooLarge
    this.dataParts.length = 0
    this.dataBytes = 0
    this.hasData = false
    this.eventTooLarge = false
    this.type = undefined
    if (skipped) { this.oversized++; return }
    this.onEvent({ type, data })
  }
}
