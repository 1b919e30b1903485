import type { ServerResponse } from 'node:http'
import type { LimitsConfig } from '../config/config.js'
import { describe, type Sql } from '../db/connect.js'
import type { Logger } from '../lib/log.js'
import type { Outcome, UsageRecord } from '../usage/ledger/record.js'
import type { Alerts } from './alerts.js'
import { estimateBilledUsd } from './estimate.js'
import { countPromptSliced } from './prompt-counts.js'
import { trimDecimal } from '../lib/decimal.js'
import type { PriceList } from './prices.js'
import { RateLimiter } from './rate.js'
import { Reserver } from './reserver.js'
import { within } from '../lib/deadline.js'
import { FailOpenLog, type FailOpenStats } from './fail-open.js'
import { DEFAULT_EXCEEDED_MESSAGE, exceededMessage, sendRefusal, type ExceededFacts, type Refusal } from './refusal.js'
import { RefusalRows } from './refusal-rows.js'
import type { BudgetPeriod } from '../config/config.js'

// The admission before a metered request goes upstream: rate limits, then a reservation of the
// request's estimated billed cost against every budget that applies (budget_reserve() in
// sql/functions/2-budgets.sql; requests that arrive together share one round trip, see
// reserver.ts), in the period of the record's created_at: the period its spend is booked in.
// Settlement needs nothing from here: the trigger on usage_events settles the reservation when
// the request's record is inserted. While a request runs, its hold is renewed (as rate leases
// are), so no sweeper releases the hold of a live request; one that ends keeps its hold for
// BUDGET_RESERVATION_TTL_MS more, the time its record has to land.
//
// With no budget in the database and no rate limit configured, needsAdmission() is false and the
// request goes on without admit(): whether any budget exists is cached and refreshed every
// BUDGET_REFRESH_MS (and at once when this process's admin API writes one), so the hot path does
// no database round trip and allocates nothing here.

export interface LimitsDeps {
  /** The main pool: the budgets-exist check and the sweeper. */
  sql: Sql
  /**
   * The admissions' own pool (rate_admit, reservations, their releases and renewals): nothing a
   * user or the operator does elsewhere can take its connections. Defaults to sql.
   */
  admissionSql?: Sql
  /** Where a refused request's record goes (outcome budget_exceeded or rate_limited, no cost). */
  record: (r: UsageRecord) => void
  log: Logger
  config: LimitsConfig
  organizationId: string
  markupPercent: string
  prices: PriceList
  alerts: Alerts | null
}

/** A request let through: call done() once when its exchange has finished. */
export interface Admission { done: () => void }

const NOTHING: Admission = { done () {} }
const RESERVE_COLUMNS = `refused_scope, limit_usd::text, period, period_start, spent_usd::text, reserved_usd::text,
  org_limit::text, org_spent::text, org_period, org_period_start,
  user_scope, user_limit::text, user_spent::text, user_period, user_period_start, refused_subject`
/** How often each replica looks for expired reservations (and rate leases). */
const SWEEP_MS = 30_000
/** Live holds are renewed at least this often, and at least three times per TTL. */
const RENEW_MS = 30_000

interface ReserveRow {
  refused_scope: 'organization' | 'user' | 'default-user' | 'group' | 'key' | null
  /** The group or API key id whose budget refused. */
  refused_subject: string | null
  limit_usd: string | null
  period: BudgetPeriod | null
  period_start: Date | null
  spent_usd: string | null
  reserved_usd: string | null
  org_limit: string | null
  org_spent: string | null
  org_period: BudgetPeriod | null
  org_period_start: Date | null
  user_scope: 'user' | 'default-user' | null
  user_limit: string | null
  user_spent: string | null
  user_period: BudgetPeriod | null
  user_period_start: Date | null
}

export class Limits {
  private anyBudgets: boolean | null = null
  /** Budget writes through this process (changed()): a re-read older than the last one is not trusted. */
  private changes = 0
  private periodic: Promise<void> | null = null
  private readonly refreshTimer: NodeJS.Timeout
  private readonly sweepTimer: NodeJS.Timeout
  private readonly rate: RateLimiter
  /** API keys' own `rpm`, in windows of their own (rate.ts). */
  private readonly keyRate: RateLimiter
  private readonly reserver: Reserver<ReserveRow>
  private readonly renewTimer: NodeJS.Timeout
  /** Event ids of the requests this process runs that hold a reservation. */
  private readonly live = new Set<string>()
  /** Which refusals get a row: a flood of them does not become a flood of inserts. */
  readonly refusalRows = new RefusalRows()
  private renewing: Promise<void> | null = null
  private readonly template: string
  private failures = 0
  private readonly failedOpen: FailOpenLog
  private readonly admissionSql: Sql
  /** Requests refused because a budget would be exceeded (402), since this process started. */
  budgetRefusals = 0

  constructor (private readonly d: LimitsDeps) {
    this.template = d.config.exceededMessage ?? DEFAULT_EXCEEDED_MESSAGE
    this.admissionSql = d.admissionSql ?? d.sql
    this.failedOpen = new FailOpenLog(d.log)
    this.reserver = new Reserver<ReserveRow>(this.admissionSql, RESERVE_COLUMNS, d.config.reservationTtlMs / 1000)
    this.rate = new RateLimiter(this.admissionSql, d.organizationId, { rpm: d.config.userRpm, maxConcurrent: d.config.userMaxConcurrent })
    // `:` is in no organization id (config.ts): a key's window can never be a user's.
    this.keyRate = new RateLimiter(this.admissionSql, `${d.organizationId}:keys`, { rpm: undefined, maxConcurrent: undefined }, Date.now, 'key')
    void this.refresh()
    // One periodic re-read at a time: a database slower than BUDGET_REFRESH_MS never piles them up.
    this.refreshTimer = setInterval(() => { this.periodic ??= this.refresh().finally(() => { this.periodic = null }) }, d.config.refreshMs)
    this.refreshTimer.unref()
    this.sweepTimer = setInterval(() => { void this.sweep() }, SWEEP_MS)
    this.sweepTimer.unref()
    this.renewTimer = setInterval(() => { void this.renew() }, Math.min(RENEW_MS, Math.max(1, Math.floor(d.config.reservationTtlMs / 3))))
    this.renewTimer.unref()
  }

  close (): void {
    clearInterval(this.refreshTimer)
    clearInterval(this.sweepTimer)
    clearInterval(this.renewTimer)
    this.rate.close()
    this.keyRate.close()
    this.failedOpen.close()
  }

  /** Admissions served without a check since this process started (/metrics, the usage page). */
  get failOpenStats (): FailOpenStats { return this.failedOpen.stats }

  /** False only when the organization is known to have no budget (the views then skip asking). */
  get mayHaveBudgets (): boolean { return this.anyBudgets !== false }

  /**
   * A budget was written through this process: its admissions and views ask Postgres from now on,
   * until a read that began after the write says whether any budget exists. Without that, the
   * requests right after a first budget would pass unchecked until the re-read came back.
   */
  changed (): Promise<void> {
    this.changes++
    this.anyBudgets = null
    return this.refresh()
  }

  /** Re-reads whether the organization has any budget (every BUDGET_REFRESH_MS, and after a write here). */
  async refresh (): Promise<void> {
    const seen = this.changes
    try {
      const [r] = await this.d.sql<Array<{ any: boolean }>>`
        select exists (select 1 from budgets where organization_id = ${this.d.organizationId} and limit_usd is not null) as any`
      // A read that began before a write here may not see it: the write's own re-read decides.
      if (seen === this.changes) this.anyBudgets = r.any
      // Prices are fetched only once there is a budget to estimate against.
      if (r.any) await this.d.prices.start()
    } catch { /* keep what was known; unknown means "ask" */ }
  }

  /** Releases reservations whose record never came (a crash that lost its journal); never a live one. */
  async sweep (): Promise<number> {
    try {
      const [r] = await this.d.sql<Array<{ n: number }>>`select budget_sweep(1000, ${[...this.live]}::uuid[]) as n`
      if (r.n > 0) this.d.log.warn({ released: r.n }, 'budgets: released expired reservations')
      return r.n
    } catch { return 0 }
  }

  /**
   * Whether this request has anything to check: a rate limit for its user, or a budget that may
   * apply. When false, the request goes on without admit() and costs this module nothing.
   */
  needsAdmission (rec: UsageRecord, keyRpm: number | null = null): boolean {
    return this.hasRateLimit(rec.userId) || (keyRpm !== null && Boolean(rec.apiKeyId)) || this.anyBudgets !== false
  }

  /**
   * The admission, or null when the request was refused and answered here (nothing may then
   * reach OpenRouter). `body` is the request body as received: it is read (prompt-counts.ts) only
   * when a budget applies. `keyRpm`: the `rpm` of the API key the request was made with (rec.apiKeyId).
   */
  admit (res: ServerResponse, rec: UsageRecord, body: Buffer, maxTokens: number | null, keyRpm: number | null = null): Promise<Admission | null> {
    // A client that leaves while the admission waits is not dispatched: its hold is let go.
    let gone = false
    const onClose = (): void => { gone = true }
    res.once('close', onClose)
    return this.admitChecked(res, rec, body, maxTokens, keyRpm).then((a) => {
      res.off('close', onClose)
      if (!a || !gone) return a
      a.done()
      void this.release(rec.eventId)
      return null
    })
  }

  /** Extends the holds of the requests still running by a TTL (one statement for all of them). */
  renew (): Promise<void> {
    // One renewal at a time; a call while one runs waits for it, so a caller knows no renewal
    // started before its call is still on its way (holds live when that one started are renewed).
    if (this.renewing !== null) return this.renewing
    if (this.live.size === 0) return Promise.resolve()
    const ids = [...this.live]
    const ttlSeconds = this.d.config.reservationTtlMs / 1000
    this.renewing = (async () => {
      await this.admissionSql`update budget_reservations set expires_at = now() + make_interval(secs => ${ttlSeconds})
                        where event_id = any(${ids}::uuid[])`
    })()
      .catch(() => { /* the next tick tries again; the TTL is three ticks at least */ })
      .finally(() => { this.renewing = null })
    return this.renewing
  }

  /** Lets go of a reservation whose request was never sent. */
  async release (eventId: string): Promise<void> {
    this.live.delete(eventId)
    await this.reserver.release([eventId])
  }

  /** Whether USER_RPM or USER_MAX_CONCURRENT applies to this user (an anonymous request has none). */
  hasRateLimit (userId: string | null): userId is string {
    return this.rate.active && userId !== null
  }

  /**
   * "My usage": USER_RPM and USER_MAX_CONCURRENT apply, budgets do not (a refused user must still
   * be able to read why). Only for a user hasRateLimit() holds for; null once the request was answered.
   */
  admitRate (res: ServerResponse, userId: string): Promise<Admission | null> {
    return this.admitRated(res, userId, null).then((r) => r && r.admission)
  }

  /**
   * The rate-limit half of an admission; null once the request was answered (429 or 503).
   * `unchecked`: it failed open (and was counted as such).
   */
  private async admitRated (res: ServerResponse, user: string, rec: UsageRecord | null, limiter = this.rate, rpm?: number): Promise<{ admission: Admission, unchecked: boolean } | null> {
    const eventId = rec?.eventId ?? null
    let r
    let abandoned = false
    let unchecked = false
    try {
      r = await this.withTimeout(rpm === undefined ? limiter.admit(user, () => abandoned) : limiter.admit(user, () => abandoned, { rpm, maxConcurrent: undefined }))
    } catch (err) {
      abandoned = true
      if (!this.failOpen(err, 'rate', user, eventId)) return this.unavailable(res)
      limiter.holdLocal(user)
      r = { lease: null }
      unchecked = true
    }
    if ('refusal' in r) {
      sendRefusal(res, r.refusal)
      if (rec) this.recordRefusal(rec, r.refusal.status, 'rate_limited', r.refusal.message)
      return null
    }
    const lease = r.lease
    return { admission: { done: () => limiter.release(user, lease) }, unchecked }
  }

  private async admitChecked (res: ServerResponse, rec: UsageRecord, body: Buffer, maxTokens: number | null, keyRpm: number | null): Promise<Admission | null> {
    let done: Admission = NOTHING
    let unchecked = false
    if (this.hasRateLimit(rec.userId)) {
      const a = await this.admitRated(res, rec.userId, rec)
      if (!a) return null
      done = a.admission
      unchecked = a.unchecked
    }
    if (keyRpm !== null && rec.apiKeyId) {
      // The key's own limit, besides its user's: a key shared by an app's many users is capped as one.
      const k = await this.admitRated(res, rec.apiKeyId, rec, this.keyRate, keyRpm)
      if (!k) { done.done(); return null }
      const user = done
      done = { done: () => { user.done(); k.admission.done() } }
      unchecked ||= k.unchecked
    }
    if (this.anyBudgets === false) return done
    let given = false
    const rate: Admission = { done: () => { if (!given) { given = true; done.done() } } }
    try {
      return await this.admitBudget(res, rec, body, maxTokens, rate, unchecked)
    } catch (err) {
      // The request is answered 500 and never sent: the rate slot it took is given back (once),
      // or the user would be refused from then on for a request that is not running.
      rate.done()
      throw err
    }
  }

  private async admitBudget (res: ServerResponse, rec: UsageRecord, body: Buffer, maxTokens: number | null, done: Admission, unchecked: boolean): Promise<Admission | null> {
    // The body is read here, only now that a budget may apply, a slice per event-loop turn.
    const counts = await countPromptSliced(body)
    const amount = estimateBilledUsd({ model: rec.model, counts, maxTokens }, this.d.prices,
      { defaultMaxTokens: this.d.config.defaultMaxTokens, imageTokens: this.d.config.imageTokens, markupPercent: this.d.markupPercent })
    rec.estimatedCostUsd = amount // the journal's intent line carries it: a crash's row is counted at it
    let row: ReserveRow | undefined
    const pending = this.reserver.reserve({ org: rec.organizationId, user: rec.userId, groups: rec.groups ?? [], key: rec.apiKeyId ?? null, eventId: rec.eventId, amount, at: rec.createdAt })
    try {
      row = await this.withTimeout(pending.row)
      this.failures = 0
    } catch (err) {
      // Too late (or failed): whatever the query still commits is let go (reserver.ts).
      pending.abandon()
      // One request served unchecked is counted once, whichever checks it skipped.
      if (unchecked ? this.d.config.failMode === 'open' : this.failOpen(err, 'budget', rec.userId, rec.eventId)) return done
      done.done()
      return this.unavailable(res)
    }
    if (!row) return done // no budget applies to this request
    if (row.refused_scope) {
      done.done()
      this.refuse(res, rec, {
        scope: row.refused_scope,
        subject: row.refused_subject,
        limitUsd: trimDecimal(row.limit_usd!),
        spentUsd: trimDecimal(row.spent_usd!),
        reservedUsd: trimDecimal(row.reserved_usd!),
        estimateUsd: amount,
        period: row.period!,
        periodStart: row.period_start!,
      })
      return null
    }
    const held: Admission = { done: () => { this.live.delete(rec.eventId); done.done() } }
    this.live.add(rec.eventId)
    if (this.d.alerts) {
      if (row.org_limit !== null) this.d.alerts.check({ scope: 'organization', userId: null, limitUsd: row.org_limit, spentUsd: row.org_spent!, period: row.org_period!, periodStart: row.org_period_start! })
      if (row.user_limit !== null) this.d.alerts.check({ scope: row.user_scope!, userId: rec.userId, limitUsd: row.user_limit, spentUsd: row.user_spent!, period: row.user_period!, periodStart: row.user_period_start! })
    }
    return held
  }

  private refuse (res: ServerResponse, rec: UsageRecord, f: ExceededFacts): void {
    this.budgetRefusals++
    const message = exceededMessage(this.template, f)
    sendRefusal(res, { status: 402, type: 'insufficient_quota', code: 'budget_exceeded', message })
    this.recordRefusal(rec, 402, 'budget_exceeded', message)
  }

  /**
   * The operator sees who was blocked: the request's own record, filled in place (the access log
   * reads it too) with no cost, goes through the ledger like every row (journaled, batched), up to
   * a user's ROWS_PER_MINUTE refusals a minute (refusal-rows.ts).
   */
  private recordRefusal (rec: UsageRecord, status: number, outcome: Outcome, message: string): void {
    rec.status = status
    rec.outcome = outcome
    rec.errorMessage = message
    rec.latencyMs = 0
    if (this.refusalRows.admit(rec.userId)) this.d.record(rec)
  }

  /**
   * BUDGET_FAIL_MODE=open serves without a reservation (the record's spend counts when it lands),
   * and every such admission is counted and logged (fail-open.ts). Closed answers 503.
   */
  private failOpen (err: unknown, check: 'rate' | 'budget', user: string | null, eventId: string | null): boolean {
    if (this.d.config.failMode === 'open') {
      this.failedOpen.note(check, user, eventId, describe(err))
      return true
    }
    this.failures++
    if (this.failures === 1 || this.failures % 100 === 0) {
      this.d.log.warn({ reason: describe(err), failMode: this.d.config.failMode, failures: this.failures }, 'budgets: postgres unavailable for the admission; answered 503')
    }
    return false
  }

  private unavailable (res: ServerResponse): null {
    const r: Refusal = { status: 503, type: 'service_unavailable', code: 'budget_unavailable', message: 'Spend limits cannot be checked right now, so the request was not sent. Try again in a moment.', headers: { 'retry-after': '5' } }
    sendRefusal(res, r)
    return null
  }

  private withTimeout<T> (p: Promise<T>): Promise<T> {
    const ms = this.d.config.dbTimeoutMs
    return within(p, ms, (): never => { throw new Error(`no answer within ${ms} ms`) })
  }
}
