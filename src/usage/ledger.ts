import type { Sql } from '../db/connect.js'
import { describe } from '../db/connect.js'
import type { Logger } from '../log.js'
import type { Journal } from './journal.js'
import { ROW_COLUMNS, toRow, type UsageRecord } from './record.js'

// Records go journal -> memory queue -> batched INSERT ... ON CONFLICT DO NOTHING -> journal
// trimmed. The request path only calls record(), which returns at once; a client never waits
// for Postgres. While Postgres is away the queue waits and retries: it never drops a record.

export interface LedgerOptions { batchSize: number, flushMs: number, maxInMemory?: number }

// During a long outage records stop piling up in memory: past maxInMemory they stay only in the
// journal (a set of their ids is all that is kept) and are read back from disk as the queue drains.
const MAX_IN_MEMORY = 20_000

export class Ledger {
  private queue: UsageRecord[] = []
  private timer: NodeJS.Timeout | null = null
  private flushing: Promise<void> | null = null
  private failures = 0
  private closed = false
  written = 0

  constructor (
    private readonly sql: Sql,
    private readonly journal: Journal | null,
    private readonly log: Logger,
    private readonly opts: LedgerOptions,
  ) {}

  /** A request's generation id is known: journal it so a crash cannot lose it. */
  pending (r: UsageRecord): void { this.journal?.pending(r) }

  /** Accepts a finished record. Never throws, never waits. */
  record (r: UsageRecord, journaled = false): void {
    const onDisk = journaled || (this.journal?.append(r) ?? false)
    if (onDisk && (this.spilled.size > 0 || this.queue.length >= (this.opts.maxInMemory ?? MAX_IN_MEMORY))) {
      this.spilled.add(r.eventId)
    } else {
      this.queue.push(r)
    }
    this.schedule(this.queue.length >= this.opts.batchSize ? 0 : this.opts.flushMs)
  }

  get inMemory (): number { return this.queue.length }

  /** Records waiting for Postgres, in memory and spilled to the journal. */
  get depth (): number { return this.queue.length + this.spilled.size }

  private readonly spilled = new Set<string>()

  /** Brings spilled records back from the journal once the queue has room again. */
  private refill (): void {
    const room = (this.opts.maxInMemory ?? MAX_IN_MEMORY) - this.queue.length
    if (this.spilled.size === 0 || !this.journal || room < (this.opts.maxInMemory ?? MAX_IN_MEMORY) / 2) return
    let taken = 0
    for (const r of this.journal.finals(this.spilled)) {
      this.spilled.delete(r.eventId)
      this.queue.push(r)
      if (++taken >= room) break
    }
  }

  /** Writes everything queued; resolves when the queue is empty or the deadline passed. */
  async drain (timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (this.depth > 0 || this.flushing) {
      if (Date.now() > deadline) return false
      if (this.flushing) await this.flushing
      else await this.flush()
      if (this.queue.length > 0 && this.failures > 0) await new Promise((r) => setTimeout(r, 100))
    }
    return true
  }

  close (): void {
    this.closed = true
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
  }

  private schedule (ms: number): void {
    if (this.closed || this.flushing) return
    if (this.timer) {
      if (ms > 0) return
      clearTimeout(this.timer)
    }
    this.timer = setTimeout(() => { this.timer = null; void this.flush() }, ms)
  }

  private flush (): Promise<void> {
    if (this.flushing) return this.flushing
    this.refill()
    if (this.queue.length === 0) return Promise.resolve()
    this.flushing = this.writeBatch().finally(() => {
      this.flushing = null
      if (this.depth > 0) {
        // Back off while Postgres fails: 100 ms doubling to 1 s, so recovery is noticed within a second.
        const wait = this.failures === 0 ? 0 : Math.min(100 * 2 ** (this.failures - 1), 1000)
        this.schedule(wait)
      }
    })
    return this.flushing
  }

  private async writeBatch (): Promise<void> {
    const batch = this.queue.slice(0, this.opts.batchSize)
    try {
      await this.sql`insert into usage_events ${this.sql(batch.map(toRow) as never, ROW_COLUMNS)} on conflict do nothing`
      this.queue.splice(0, batch.length)
      for (const r of batch) this.journal?.committed(r.eventId)
      this.written += batch.length
      if (this.failures > 0) this.log.info({ afterFailures: this.failures, queued: this.queue.length }, 'ledger: postgres writes resumed')
      this.failures = 0
    } catch (err) {
      this.failures++
      if (this.failures === 1 || this.failures % 20 === 0) {
        this.log.warn({ reason: describe(err), queued: this.queue.length, failures: this.failures }, 'ledger: insert failed, will retry')
      }
    }
  }
}
