import { request } from 'undici'
import type { Sql } from '../db/connect.js'
import type { Logger } from '../lib/log.js'
import { toUnits, trimDecimal } from '../lib/decimal.js'
import type { BudgetPeriod } from '../config/config.js'
import { resetsAt } from './periods.js'

// Warnings before the wall. When an admitted request finds a budget at BUDGET_WARN_PERCENT or
// more, the first replica to claim the counter's `warned` flag logs a warning and, with
// ALERT_WEBHOOK_URL set, POSTs it, retried with backoff. All of it runs off the request path.

export interface WarnFacts {
  scope: 'organization' | 'user' | 'default-user'
  userId: string | null
  limitUsd: string
  spentUsd: string
  period: BudgetPeriod
  periodStart: Date
}

const RETRIES = 6

export class Alerts {
  /** Counters this process already saw claimed: no further query for them this period. */
  private readonly claimed = new Set<string>()
  private readonly percent100: bigint
  sent = 0

  constructor (
    private readonly sql: Sql,
    private readonly org: string,
    warnPercent: number,
    private readonly webhook: string | undefined,
    private readonly log: Logger,
    private readonly backoffMs = 1000,
  ) {
    this.percent100 = BigInt(Math.round(warnPercent * 100))
  }

  /** Called with a budget's spend as an admission saw it; cheap when under the threshold. */
  check (f: WarnFacts): void {
    if (toUnits(f.spentUsd) * 10_000n < toUnits(f.limitUsd) * this.percent100) return
    const counterScope = f.scope === 'organization' ? 'organization' : 'user'
    const user = counterScope === 'user' ? (f.userId ?? '') : ''
    const key = `${counterScope}|${user}|${f.period}|${f.periodStart.getTime()}`
    if (this.claimed.has(key)) return
    if (this.claimed.size > 100_000) this.claimed.clear()
    this.claimed.add(key)
    this.sql<Array<{ spent_usd: string }>>`
      update budget_counters set warned = true
       where organization_id = ${this.org} and scope = ${counterScope} and user_id = ${user}
         and period = ${f.period} and period_start = ${f.periodStart} and not warned
      returning spent_usd::text`
      .then((rows) => { if (rows.length > 0) this.announce({ ...f, spentUsd: trimDecimal(rows[0].spent_usd) }) })
      .catch((err: Error) => { this.claimed.delete(key); this.log.warn({ err: err.message }, 'budgets: could not record a warning') })
  }

  private announce (f: WarnFacts): void {
    const resets = resetsAt(f.period, f.periodStart)
    const doc = {
      organization: this.org,
      scope: f.scope,
      user: f.userId,
      limit_usd: f.limitUsd,
      spent_usd: f.spentUsd,
      period: f.period,
      resets_at: resets ? resets.toISOString() : null,
    }
    this.log.warn(doc, 'budget: warning threshold crossed')
    if (this.webhook) void this.post(JSON.stringify(doc))
  }

  private async post (body: string): Promise<void> {
    for (let attempt = 0; attempt < RETRIES; attempt++) {
      try {
        const res = await request(this.webhook!, { method: 'POST', body, headers: { 'content-type': 'application/json' }, headersTimeout: 10_000, bodyTimeout: 10_000 })
        await res.body.dump()
        if (res.statusCode < 300) { this.sent++; return }
        if (res.statusCode < 500 && res.statusCode !== 429) break
      } catch { /* retried below */ }
      await new Promise((r) => setTimeout(r, this.backoffMs * 2 ** attempt).unref())
    }
    this.log.error({ webhook: new URL(this.webhook!).host }, 'budget: alert webhook failed after retries')
  }
}
