import type { Sql } from '../db/connect.js'
import { cancelQuery } from '../db/bounded.js'

// Admissions that arrive together share one round trip and one commit (budget_reserve_many() in
// sql/functions/2-budgets.sql): at 64 requests in flight the organization's counter is locked
// once per batch instead of once per request. A lone request goes at once, as it would alone.
//
// An admission that stops waiting (its deadline passed) abandons its item, and nothing it
// reserved stays behind: a queued item leaves the queue; a batch whose every item was abandoned
// is cancelled; an abandoned item of a batch that commits anyway has its hold released at once.

/**
 * `at`: the record's created_at, the period the hold is booked in (one clock per request);
 * `groups` and `key`: the request's groups and API key id, whose budgets apply too.
 */
export interface ReserveItem { org: string, user: string | null, groups?: string[], key?: string | null, eventId: string, amount: string, at: string }

/** The item's row (undefined: no budget applies), and a way to stop waiting for it. */
export interface PendingReservation<R> { row: Promise<R | undefined>, abandon: () => void }

const MAX_BATCH = 256
const IN_FLIGHT = 2
/** deadlock_detected, serialization_failure: the statement can run again as it was. */
const RETRYABLE = new Set(['40P01', '40001'])
const RETRIES = 3

interface Pending<R> {
  item: ReserveItem
  resolve: (row: R | undefined) => void
  reject: (err: unknown) => void
  abandoned: boolean
  batch: Batch | null
}

interface Batch { cancel: () => void, open: number }

export class Reserver<R extends object> {
  private queue: Array<Pending<R>> = []
  private inFlight = 0
  private scheduled = false

  constructor (private readonly sql: Sql, private readonly columns: string, private readonly ttlSeconds: number) {}

  reserve (item: ReserveItem): PendingReservation<R> {
    let p!: Pending<R>
    const row = new Promise<R | undefined>((resolve, reject) => {
      p = { item, resolve, reject, abandoned: false, batch: null }
    })
    this.queue.push(p)
    this.schedule()
    return { row, abandon: () => this.abandon(p) }
  }

  private abandon (p: Pending<R>): void {
    if (p.abandoned) return
    p.abandoned = true
    p.reject(new Error('reservation abandoned'))
    if (p.batch === null) {
      this.queue = this.queue.filter((q) => q !== p)
      return
    }
    if (--p.batch.open === 0) p.batch.cancel()
  }

  private schedule (): void {
    if (this.scheduled || this.inFlight >= IN_FLIGHT) return
    this.scheduled = true
    // After this turn's other admissions joined the queue.
    setImmediate(() => { this.scheduled = false; void this.flush() })
  }

  private async flush (): Promise<void> {
    if (this.queue.length === 0 || this.inFlight >= IN_FLIGHT) return
    const batch = this.queue.splice(0, MAX_BATCH)
    this.inFlight++
    const items = batch.map((p, i) => ({ i, org: p.item.org, usr: p.item.user, groups: p.item.groups ?? [], key: p.item.key ?? null, ev: p.item.eventId, amount: p.item.amount, at: p.item.at }))
    // The items go as JSON text, cast in the statement: how they are sent does not rest on the
    // parameter type the server describes.
    const send = () => this.sql.unsafe<Array<R & { i: number }>>(
      `select i, ${this.columns} from budget_reserve_many($1::text::jsonb, make_interval(secs => $2))`,
      [JSON.stringify(items), this.ttlSeconds])
    let query = send()
    let cancelled = false
    const state: Batch = { cancel: () => { cancelled = true; cancelQuery(query) }, open: batch.length }
    for (const p of batch) p.batch = state
    try {
      let rows: Array<R & { i: number }>
      // A deadlock or serialization failure rolled the whole batch back: nothing was reserved, so
      // it runs again (a budget created between two batches' lock orders can cause one), rather
      // than failing every admission in it (open, in the default mode).
      for (let attempt = 1; ; attempt++) {
        try { rows = await query; break } catch (err) {
          if (cancelled || attempt >= RETRIES || !RETRYABLE.has((err as { code?: string }).code ?? '')) throw err
          query = send()
        }
      }
      const byIndex = new Map<number, R>()
      for (const r of rows) byIndex.set(r.i, r)
      batch.forEach((p, i) => { if (!p.abandoned) p.resolve(byIndex.get(i)) })
    } catch (err) {
      for (const p of batch) if (!p.abandoned) p.reject(err)
    } finally {
      this.inFlight--
      if (this.queue.length > 0) this.schedule()
    }
    // Committed, failed, or cancelled: whichever it was, an abandoned item holds nothing after this
    // (a release of a hold that never was is a no-op).
    const gone = batch.filter((p) => p.abandoned).map((p) => p.item.eventId)
    if (gone.length > 0) await this.release(gone)
  }

  /** Lets go of these requests' holds (budget_release()); a failure leaves them to expire. */
  async release (eventIds: string[]): Promise<void> {
    try {
      await this.sql`select budget_release(${eventIds}::uuid[])`
    } catch { /* not renewed: they expire within the TTL and the sweeper releases them */ }
  }
}
