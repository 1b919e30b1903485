import type { Sql } from '../db/connect.js'
import type { BudgetFor } from '../usage/budget-seam.js'
import { budgetStatus } from './store.js'

/**
 * The budget that governs one user now (their own, else the default), for the usage page's bar
 * and "My usage". `mayHaveBudgets` spares the query when the organization has none.
 */
export function budgetForUser (sql: () => Sql, organizationId: string, mayHaveBudgets: () => boolean): BudgetFor {
  return async (userId) => {
    if (userId === null || !mayHaveBudgets()) return null
    const rows = await budgetStatus(sql(), organizationId, new Date(), userId)
    const b = rows.find((r) => r.applies && r.scope !== 'organization')
    if (!b) return null
    return { limit_usd: b.limit_usd, used_usd: b.spent_usd, remaining_usd: b.remaining_usd, period: b.period, resets_at: b.resets_at }
  }
}
