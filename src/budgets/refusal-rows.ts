// Which refusals (402, 429) become rows. An operator looking into "it keeps refusing me" needs the
// user's refusals in the ledger, but a client that keeps hammering after its 429 pays nothing for
// it and must not turn each refusal into a journal line and an insert: per user, the first
// ROWS_PER_MINUTE refusals of each minute are recorded, the rest only counted (/metrics counts
// every outcome, and the access log has a line for each).

export const ROWS_PER_MINUTE = 60

export class RefusalRows {
  private window = 0
  private readonly counts = new Map<string, number>()
  /** Refusals answered but not recorded since the start. */
  unrecorded = 0

  constructor (private readonly perMinute = ROWS_PER_MINUTE, private readonly now: () => number = Date.now) {}

  /** True when this refusal of `user` (null: the organization's own requests) gets a row. */
  admit (user: string | null): boolean {
    const minute = Math.floor(this.now() / 60_000)
    if (minute !== this.window) { this.window = minute; this.counts.clear() }
    const key = user ?? ''
    const n = (this.counts.get(key) ?? 0) + 1
    this.counts.set(key, n)
    if (n <= this.perMinute) return true
    this.unrecorded++
    return false
  }
}
