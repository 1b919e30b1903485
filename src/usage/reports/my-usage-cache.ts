// "My usage" answers, kept per user for a few seconds: a user (or a script) asking again and again
// gets the same answer without three more queries each time, and requests that arrive together
// share one read. The key is the user's id and external id, so no one ever sees another user's
// answer. Bounded: past `max` users the oldest entries go. A failed read is not kept.

export interface SummaryCacheOptions {
  /** How long an answer is reused. */
  ttlMs: number
  /** Users kept at most. */
  max: number
  now?: () => number
}

export interface SummaryCache<W> {
  get: (who: W, externalUserId: string) => Promise<string>
  /** Forgets every answer (a budget changed: the budget line must be read again). */
  clear: () => void
  readonly size: number
}

interface Entry { at: number, text: Promise<string> }

export const MY_USAGE_CACHE = { ttlMs: 5_000, max: 10_000 }

export function cachedSummary<W extends { userId: string | null }> (read: (who: W, externalUserId: string) => Promise<string>, o: SummaryCacheOptions): SummaryCache<W> {
  const now = o.now ?? Date.now
  const entries = new Map<string, Entry>()
  return {
    get (who, externalUserId) {
      const key = JSON.stringify([who.userId, externalUserId])
      const t = now()
      const hit = entries.get(key)
      if (hit && t - hit.at < o.ttlMs) return hit.text
      if (hit) entries.delete(key)
      if (entries.size >= o.max) {
        // Map order is insertion order: the oldest tenth goes in one sweep.
        let drop = Math.max(1, Math.ceil(o.max / 10))
        for (const k of entries.keys()) { if (drop-- <= 0) break; entries.delete(k) }
      }
      const text = read(who, externalUserId)
      const entry = { at: t, text }
      entries.set(key, entry)
      text.catch(() => { if (entries.get(key) === entry) entries.delete(key) })
      return text
    },
    clear () { entries.clear() },
    get size () { return entries.size },
  }
}
