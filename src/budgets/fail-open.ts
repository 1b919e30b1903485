import type { Logger } from '../lib/log.js'

// Admissions served without a check (BUDGET_FAIL_MODE=open, Postgres did not answer in time):
// the documented last resort for a database that is really down, and never a silent one. Each is
// counted (/metrics, the usage page). The log names the first one of an episode at once, with its
// user and event id; during an outage the rest are summed into one line per second (how many,
// how many users, a sample of users and the first and last event id), so a thousand requests a
// second cost one line, not a thousand, and still none goes uncounted. An episode that lasts
// longer than a minute is said at error level once a minute.

export interface FailOpenStats {
  /** Admissions served unchecked since this process started. */
  total: number
  /** When the last one happened, or null. */
  lastAt: Date | null
  /** Why the last one could not be checked. */
  lastReason: string | null
}

const WINDOW_MS = 1000
const ERROR_EVERY_MS = 60_000
const SAMPLE_USERS = 10

interface Window { count: number, users: Set<string>, firstEventId: string, lastEventId: string, reason: string }

export class FailOpenLog {
  total = 0
  lastAt: Date | null = null
  lastReason: string | null = null
  private window: Window | null = null
  private timer: NodeJS.Timeout | null = null
  private episodeStart = 0
  private lastErrorAt = 0

  constructor (private readonly log: Logger, private readonly now: () => number = Date.now) {}

  get stats (): FailOpenStats { return { total: this.total, lastAt: this.lastAt, lastReason: this.lastReason } }

  /** One admission served without a check. `check` says which: the rate limit or the budget. */
  note (check: 'rate' | 'budget', user: string | null, eventId: string | null, reason: string): void {
    this.total++
    const now = this.now()
    this.lastAt = new Date(now)
    this.lastReason = reason
    const who = user ?? '(organization)'
    const id = eventId ?? '(my-usage)'
    if (this.timer === null) {
      // A new episode: this one is named on its own, now.
      this.episodeStart = now
      this.log.warn({ check, user: who, eventId: id, reason, failedOpenTotal: this.total },
        'budgets: postgres unavailable for the admission; served WITHOUT a spend check (BUDGET_FAIL_MODE=open); its spend counts when its record lands')
      this.timer = setInterval(() => { this.flush() }, WINDOW_MS)
      this.timer.unref()
      return
    }
    const w = this.window ??= { count: 0, users: new Set(), firstEventId: id, lastEventId: id, reason }
    w.count++
    if (w.users.size < 10_000) w.users.add(who)
    w.lastEventId = id
    w.reason = reason
  }

  close (): void {
    this.flush()
    if (this.timer) clearInterval(this.timer)
    this.timer = null
  }

  private flush (): void {
    const w = this.window
    this.window = null
    if (!w) {
      // A second without any: the episode is over.
      if (this.timer) clearInterval(this.timer)
      this.timer = null
      return
    }
    const now = this.now()
    const long = now - this.episodeStart > ERROR_EVERY_MS && now - this.lastErrorAt >= ERROR_EVERY_MS
    if (long) this.lastErrorAt = now
    const fields = {
      failedOpen: w.count, users: w.users.size, sampleUsers: [...w.users].slice(0, SAMPLE_USERS),
      firstEventId: w.firstEventId, lastEventId: w.lastEventId, reason: w.reason, failedOpenTotal: this.total,
      episodeSeconds: Math.round((now - this.episodeStart) / 1000),
    }
    const msg = 'budgets: postgres unavailable for the admission; requests served WITHOUT a spend check in the last second (BUDGET_FAIL_MODE=open)'
    if (long) this.log.error(fields, msg)
    else this.log.warn(fields, msg)
  }
}
