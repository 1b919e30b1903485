import type { BudgetPeriod } from '../config/config.js'
import type { Sql } from '../db/connect.js'
import { trimDecimal } from '../lib/decimal.js'
import { periodStart, resetsAt } from './periods.js'

// The budget that governs each user now (their own, else the default) with its current period's
// spend, for the usage page's bars and "My usage". However many users a report lists, this is ONE
// query: the operator's page must not turn into thousands of round trips on the primary.

/** The budget that governs one user now, as the usage views show it (a bar, a line of text). */
export interface UserBudget {
  /** The budget for the period, exact USD. */
  limit_usd: string
  /** Spent in the current period, exact USD (billed cost). */
  used_usd: string
  /** limit − spent − held by requests in flight, exact USD; 0 when used up (never negative). */
  remaining_usd: string
  period: BudgetPeriod
  /** ISO instant at which the period starts over; null for a 'total' budget, which never does. */
  resets_at: string | null
}

/** One user's budget ("My usage"); userId null: requests made with no user (the organization itself). */
export type BudgetFor = (userId: string | null) => Promise<UserBudget | null>

/** Many users' budgets in one read (the usage report); a user without one is absent. */
export type BudgetsFor = (userIds: readonly string[]) => Promise<Map<string, UserBudget>>

/** For a deployment with no budgets: every report shows spend without a bar. */
export const noBudgetsFor: BudgetsFor = async () => new Map()

interface Row { user_id: string, limit_usd: string, period: BudgetPeriod, spent: string, remaining: string }

/** Budgets of many users in one query; users with no budget are absent from the map. */
export async function budgetsOf (sql: Sql, organizationId: string, userIds: readonly string[], now = new Date()): Promise<Map<string, UserBudget>> {
  const out = new Map<string, UserBudget>()
  const ids = [...new Set(userIds)]
  if (ids.length === 0) return out
  // Period starts from this clock, passed in: nothing depends on the session's time zone.
  const starts = { day: periodStart('day', now), week: periodStart('week', now), month: periodStart('month', now), total: periodStart('total', now) }
  const rows = await sql<Row[]>`
    select u.user_id, b.limit_usd::text as limit_usd, b.period,
           coalesce(c.spent_usd, 0)::text as spent,
           greatest(b.limit_usd - coalesce(c.spent_usd + c.reserved_usd, 0), 0)::text as remaining
      from unnest(${ids}::text[]) as u(user_id)
      cross join lateral (
        select limit_usd, period from budgets
         where organization_id = ${organizationId} and limit_usd is not null
           and (scope = 'default-user' or (scope = 'user' and user_id = u.user_id))
         order by scope = 'user' desc
         limit 1) b
      left join budget_counters c
        on c.organization_id = ${organizationId} and c.scope = 'user' and c.user_id = u.user_id and c.period = b.period
       and c.period_start = case b.period when 'day' then ${starts.day}::timestamptz when 'week' then ${starts.week}::timestamptz
                                          when 'month' then ${starts.month}::timestamptz else ${starts.total}::timestamptz end`
  for (const r of rows) {
    const resets = resetsAt(r.period, now)
    out.set(r.user_id, {
      limit_usd: trimDecimal(r.limit_usd), used_usd: trimDecimal(r.spent), remaining_usd: trimDecimal(r.remaining),
      period: r.period, resets_at: resets ? resets.toISOString() : null,
    })
  }
  return out
}

/** For a report: every listed user's budget at once. `mayHaveBudgets` spares the query when there are none. */
export function budgetsForUsers (sql: () => Sql, organizationId: string, mayHaveBudgets: () => boolean): BudgetsFor {
  return async (userIds) => {
    if (!mayHaveBudgets()) return new Map()
    return await budgetsOf(sql(), organizationId, userIds)
  }
}

/** For "My usage": one user's budget (the same query, for one id). */
export function budgetForUser (sql: () => Sql, organizationId: string, mayHaveBudgets: () => boolean): BudgetFor {
  const many = budgetsForUsers(sql, organizationId, mayHaveBudgets)
  return async (userId) => userId === null ? null : (await many([userId])).get(userId) ?? null
}
