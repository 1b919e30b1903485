import { randomUUID } from 'node:crypto'
import type { Sql } from '../db/connect.js'
import type { Refusal } from './refusal.js'

// USER_RPM and USER_MAX_CONCURRENT across replicas. Postgres holds the shared truth (rate_admit()
// in sql/006_budgets.sql: a per-user row lock, minute windows on the database clock, one lease
// per request in flight). This process also keeps what it knows locally, so a user who is over
// the limit is refused here without a database round trip: their own requests still in flight on
// this replica, and a window the database already declared full.

export interface RateOptions { rpm: number | undefined, maxConcurrent: number | undefined }

/** Whose limit a refusal names: a user's (USER_RPM, USER_MAX_CONCURRENT) or an API key's own `rpm`. */
export type RateSubject = 'user' | 'key'

const LEASE_TTL_S = 120
const HEARTBEAT_MS = 30_000

interface Local { inFlight: number, fullUntil: number }

export type RateResult = { lease: string | null } | { refusal: Refusal }

export class RateLimiter {
  private readonly local = new Map<string, Local>()
  private readonly leases = new Set<string>()
  private readonly timer: NodeJS.Timeout
  private readonly instance = randomUUID()

  /**
   * `org` names the windows' namespace in rate_windows: the organization's id for its users, a
   * name no organization can have for its keys (rate.ts's callers), so a key's window is never a
   * user's. `opts` are the limits when admit() is given none.
   */
  constructor (private readonly sql: Sql, private readonly org: string, private readonly opts: RateOptions, private readonly now: () => number = Date.now,
    private readonly subject: RateSubject = 'user') {
    // A sidecar keeps its leases alive while their requests run; a crashed one's lapse.
    this.timer = setInterval(() => {
      if (this.leases.size === 0) return
      this.sql`update rate_leases set expires_at = now() + make_interval(secs => ${LEASE_TTL_S}) where lease_id = any(${[...this.leases]}::uuid[])`.catch(() => {})
    }, HEARTBEAT_MS)
    this.timer.unref()
  }

  get active (): boolean { return this.opts.rpm !== undefined || this.opts.maxConcurrent !== undefined }

  close (): void { clearInterval(this.timer) }

  /**
   * Refused at once when this replica alone knows the user is over; else asks Postgres. When the
   * caller gave up waiting (abandoned() is true by the time Postgres answers), the slot and lease go.
   */
  async admit (user: string, abandoned: () => boolean = () => false, opts: RateOptions = this.opts): Promise<RateResult> {
    const l = this.local.get(user) ?? { inFlight: 0, fullUntil: 0 }
    const now = this.now()
    if (opts.rpm !== undefined && l.fullUntil > now) return { refusal: this.refusal(opts, 'rpm', 0, l.fullUntil - now) }
    if (opts.maxConcurrent !== undefined && l.inFlight >= opts.maxConcurrent) return { refusal: this.refusal(opts, 'concurrent', null, 1000) }
    const lease = opts.maxConcurrent !== undefined ? randomUUID() : null
    // This request holds a local slot while Postgres is asked: a second one of the same user
    // meanwhile is counted without a round trip.
    const others = l.inFlight++
    this.local.set(user, l)
    let r
    try {
      [r] = await this.sql<Array<{ refused: string | null, requests: number, in_flight: number, reset_ms: number }>>`
        select * from rate_admit(${this.org}, ${user}, ${lease}, ${opts.rpm ?? null}, ${opts.maxConcurrent ?? null},
                                 make_interval(secs => ${LEASE_TTL_S}), ${this.instance}::uuid, ${others})`
    } catch (err) {
      this.release(user, null)
      throw err
    }
    if (r.refused || abandoned()) this.release(user, r.refused ? null : lease)
    if (r.refused === 'rpm') {
      l.fullUntil = now + r.reset_ms
      this.local.set(user, l)
      return { refusal: this.refusal(opts, 'rpm', 0, r.reset_ms) }
    }
    if (r.refused) return { refusal: this.refusal(opts, 'concurrent', opts.rpm === undefined ? null : opts.rpm - r.requests, 1000) }
    if (lease) this.leases.add(lease)
    return { lease }
  }

  /** A request admitted without Postgres (BUDGET_FAIL_MODE=open) still counts here. */
  holdLocal (user: string): void {
    const l = this.local.get(user) ?? { inFlight: 0, fullUntil: 0 }
    l.inFlight++
    this.local.set(user, l)
  }

  /** The request finished: its lease goes, off the request path. */
  release (user: string, lease: string | null): void {
    const l = this.local.get(user)
    if (l) {
      l.inFlight--
      if (l.inFlight <= 0 && l.fullUntil <= this.now()) this.local.delete(user)
    }
    if (lease) {
      this.leases.delete(lease)
      this.sql`delete from rate_leases where lease_id = ${lease}`.catch(() => {})
    }
  }

  private refusal (opts: RateOptions, why: 'rpm' | 'concurrent', remaining: number | null, resetMs: number): Refusal {
    const retry = Math.max(1, Math.ceil(resetMs / 1000))
    const headers: Record<string, string> = { 'retry-after': String(retry) }
    if (opts.rpm !== undefined) {
      headers['x-ratelimit-limit-requests'] = String(opts.rpm)
      headers['x-ratelimit-remaining-requests'] = String(Math.max(0, remaining ?? 0))
      headers['x-ratelimit-reset-requests'] = `${(Math.max(resetMs, 0) / 1000).toFixed(3).replace(/\.?0+$/, '')}s`
    }
    const message = this.subject === 'key'
      ? `This API key has sent too many requests: its limit is ${opts.rpm} per minute. Try again in ${retry} s.`
      : why === 'rpm'
        ? `You have sent too many requests: the limit is ${opts.rpm} per minute. Try again in ${retry} s.`
        : `You have too many requests in progress: the limit is ${opts.maxConcurrent} at a time. Try again when one has finished.`
    return { status: 429, type: 'rate_limit_exceeded', code: 'rate_limit_exceeded', message, headers }
  }
}
