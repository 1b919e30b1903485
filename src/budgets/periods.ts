import type { BudgetPeriod } from '../config/config.js'

// Budget periods in UTC, mirroring budget_period_start() in sql/006_budgets.sql: weeks start on
// Monday, months on the 1st, 'total' never resets.

export const PERIODS: readonly BudgetPeriod[] = ['day', 'week', 'month', 'total']

export function periodStart (period: BudgetPeriod, at: Date): Date {
  const y = at.getUTCFullYear()
  const m = at.getUTCMonth()
  const d = at.getUTCDate()
  if (period === 'total') return new Date(0)
  if (period === 'month') return new Date(Date.UTC(y, m, 1))
  if (period === 'day') return new Date(Date.UTC(y, m, d))
  const sinceMonday = (at.getUTCDay() + 6) % 7
  return new Date(Date.UTC(y, m, d - sinceMonday))
}

/** When the period that contains `at` ends; null for 'total'. */
export function resetsAt (period: BudgetPeriod, at: Date): Date | null {
  const s = periodStart(period, at)
  if (period === 'total') return null
  if (period === 'month') return new Date(Date.UTC(s.getUTCFullYear(), s.getUTCMonth() + 1, 1))
  return new Date(s.getTime() + (period === 'day' ? 1 : 7) * 86_400_000)
}

/** "2026-12-01 00:00 UTC" */
export function humanTime (d: Date): string {
  return d.toISOString().slice(0, 16).replace('T', ' ') + ' UTC'
}

export const ADJECTIVE: Record<BudgetPeriod, string> = { day: 'daily', week: 'weekly', month: 'monthly', total: 'total' }
