import type { Sql } from '../db/connect.js'
import { bounded } from '../db/bounded.js'
import { overruns, utilization } from '../budgets/store.js'

// What /metrics shows that only Postgres knows (is it up, how spent are the budgets), read in the
// background with a short deadline and kept here. A scrape answers from these at once: /metrics
// never waits on the database, and a database that does not answer shows as postgres_up 0 and
// a growing age of the last answer, not as a scrape that hangs.

export interface Readings {
  /** The last probe got an answer within its deadline. */
  postgresUp: boolean
  /** When Postgres last answered a probe (ms since the epoch); null if it never did. */
  lastAnswerAt: number | null
  /** Budget utilization by scope, as of the last answer; null when unknown. */
  utilization: Array<{ scope: 'organization' | 'default', ratio: number }> | null
  /** Billed USD over the reservations in the current period, by scope; null when unknown. */
  overruns: Array<{ scope: 'organization' | 'default', usd: string }> | null
}

export interface DbReadings {
  latest: () => Readings
  /** One round of reads; resolves when it answered or missed its deadline, never rejects. */
  refresh: () => Promise<void>
  stop: () => void
}

export const READINGS_EVERY_MS = 5_000
export const READINGS_DEADLINE_MS = 2_000

export function startDbReadings (source: () => { sql: Sql, org: string } | null, opts: { everyMs?: number, deadlineMs?: number } = {}): DbReadings {
  const deadline = opts.deadlineMs ?? READINGS_DEADLINE_MS
  const latest: Readings = { postgresUp: false, lastAnswerAt: null, utilization: null, overruns: null }
  let running: Promise<void> | null = null
  const round = async (): Promise<void> => {
    const s = source()
    if (!s) return
    const sql = bounded(s.sql, deadline, 'the /metrics readings deadline')
    try {
      await sql`select 1`
      latest.postgresUp = true
      latest.lastAnswerAt = Date.now()
    } catch {
      latest.postgresUp = false
      latest.utilization = null
      latest.overruns = null
      return
    }
    try { latest.utilization = await utilization(sql, s.org) } catch { latest.utilization = null }
    try { latest.overruns = await overruns(sql, s.org) } catch { latest.overruns = null }
  }
  // One round at a time: a slow database never piles reads up.
  const refresh = (): Promise<void> => (running ??= round().finally(() => { running = null }))
  const timer = setInterval(() => { void refresh() }, opts.everyMs ?? READINGS_EVERY_MS)
  timer.unref()
  return { latest: () => latest, refresh, stop: () => clearInterval(timer) }
}
