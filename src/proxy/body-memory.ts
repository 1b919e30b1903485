// Memory for request bodies too large to arrive in one read, reused from one request to the next.
// A fresh buffer per long chat turn cost about a fifth more CPU per request than a reused one
// (500 KB bodies, `node bench/ab.js --body=chat500k`; docs in BENCHMARKS.md). A buffer holds a
// user's conversation, so it comes back only when nothing can read it any more: its exchange is
// over, and no upstream socket has a write the kernel has not taken (such a write still points
// into the buffer it was given). When that cannot be said, the buffer is left to the GC.

const GRAIN = 64 * 1024

export class BodyMemory {
  private readonly free: Buffer[] = []
  private kept = 0

  /** `maxBytes`: the most kept between requests; `writesPending`: any upstream write unfinished. */
  constructor (private readonly maxBytes: number, private readonly writesPending: () => boolean) {}

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

  /** The exchange that used `buf` is over: keep it for the next body if it is surely unread. */
  give (buf: Buffer): void {
    if (this.kept + buf.length > this.maxBytes || this.writesPending()) return
    this.free.push(buf)
    this.kept += buf.length
  }

  /** Bytes kept for the next bodies. */
  get bytes (): number { return this.kept }
}
