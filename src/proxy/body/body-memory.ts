// Memory for request bodies too large to arrive in one read, reused from one request to the next.
// A fresh buffer per long chat turn cost about a fifth more CPU per request than a reused one
// (500 KB bodies, `node bench/ab.js --body=chat500k`; docs in BENCHMARKS.md). A buffer holds a
// user's conversation, so it comes back only when nothing can read it any more: its exchange is
// over, and the socket its body went out on has no write the kernel has not taken (such a write
// still points into the buffer; upstream.ts knows the socket). When that cannot be said, the
// buffer is left to the GC.

const GRAIN = 64 * 1024

export class BodyMemory {
  private readonly free: Buffer[] = []
  private kept = 0

  /** `maxBytes`: the most kept between requests; `writing(body)`: a write may still read `body`. */
  constructor (private readonly maxBytes: number, private readonly writing: (body: Buffer) => boolean) {}

  /** At least `size` bytes, whatever they hold: the caller writes every byte it later reads. */
  take (size: number): Buffer {
    let best = -1
    for (let i = 0; i < this.free.length; i++) {
      const n = this.free[i].length
      if (n >= size && n <= 2 * size + GRAIN && (best < 0 || n < this.free[best].length)) best = i
    }
    if (best < 0) return Buffer.allocUnsafeSlow(Math.ceil(size / GRAIN) * GRAIN) // never pooled by Node
    const buf = this.free[best]
    this.free[best] = this.free[this.free.length - 1]
    this.free.pop()
    this.kept -= buf.length
    return buf
  }

  /**
   * The exchange that used `buf` is over: keep it for the next body if it is surely unread.
   * `sent` is what was written upstream: a view of `buf`, or a copy that leaves it free.
   */
  give (buf: Buffer, sent: Buffer | null): void {
    if (this.kept + buf.length > this.maxBytes) return
    if (sent !== null && sent.buffer === buf.buffer && this.writing(sent)) return
    this.free.push(buf)
    this.kept += buf.length
  }

  /** Bytes kept for the next bodies. */
  get bytes (): number { return this.kept }
}
