import type { Sql } from '../db/connect.js'

// Admissions that arrive together share one round trip and one commit (budget_reserve_many() in
// sql/006_budgets.sql): at 64 requests in flight the organization's counter is locked once per
// batch instead of once per request. A lone request goes at once, as it would alone.

export interface ReserveItem { org: string, user: string | null, eventId: string, amount: string }

const MAX_BATCH = 256
const IN_FLIGHT = 2

interface Pending<R> { item: ReserveItem, resolve: (row: R | undefined) => void, reject: (err: unknown) => void }

export class Reserver<R extends object> {
  private queue: Array<Pending<R>> = []
  private inFlight = 0
  private scheduled = false

  constructor (private readonly sql: Sql, private readonly columns: string, private readonly ttlSeconds: number, private readonly now: () => Date) {}

  /** The item's row, or undefined when no budget applies to it. */
  reserve (item: ReserveItem): Promise<R | undefined> {
    return new Promise((resolve, reject) => {
      this.queue.push({ item, resolve, reject })
      this.schedule()
    })
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
    try {
      const items = batch.map((p, i) => ({ i, org: p.item.org, usr: p.item.user, ev: p.item.eventId, amount: p.item.amount }))
      const rows = await this.sql.unsafe<Array<R & { i: number }>>(
        `select i, ${this.columns} from budget_reserve_many($1::jsonb, $2, make_interval(secs => $3))`,
        [items as never, this.now(), this.ttlSeconds])
      const byIndex = new Map<number, R>()
      for (const r of rows) byIndex.set(r.i, r)
      batch.forEach((p, i) => p.resolve(byIndex.get(i)))
    } catch (err) {
      for (const p of batch) p.reject(err)
    } finally {
      this.inFlight--
      if (this.queue.length > 0) this.schedule()
    }
  }
}
