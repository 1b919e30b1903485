// Where budgets plug into the usage views: the admin page's bar and "My usage" ask this for a
// user's budget. Budgets live in their own module (h4-budgets); until it provides budgetFor,
// every answer is null and the views show spend without a bar.

export interface BudgetStatus {
  /** The budget for the period, exact USD. */
  limit_usd: string
  /** Spent in the current period, exact USD (billed cost). */
  used_usd: string
  /** limit - used, exact USD; negative when overrun. */
  remaining_usd: string
  /** e.g. 'month', 'week', 'day'. */
  period: string
  /** ISO instant at which the period starts over, when it does. */
  resets_at: string | null
}

/** userId null: requests made with no user (the organization itself). */
export type BudgetFor = (userId: string | null) => Promise<BudgetStatus | null>

export const noBudgets: BudgetFor = async () => null

/** Many users' budgets in one read (the usage report); a user without one is absent. */
export type BudgetsFor = (userIds: readonly string[]) => Promise<Map<string, BudgetStatus>>

export const noBudgetsFor: BudgetsFor = async () => new Map()
