import type { Sums } from '../db/usage-report.js'
import { sumDecimals } from './decimal.js'

/** The totals of a grouping's rows: each request is in exactly one group, so these are the period's totals, with no second scan. */
export function totalsOf (rows: readonly Sums[]): Sums {
  const sum = (c: keyof Sums): string => sumDecimals(['0', ...rows.map((r) => String(r[c]))])
  return {
    requests: rows.reduce((n, r) => n + r.requests, 0),
    prompt_tokens: sum('prompt_tokens'),
    completion_tokens: sum('completion_tokens'),
    cached_tokens: sum('cached_tokens'),
    reasoning_tokens: sum('reasoning_tokens'),
    total_tokens: sum('total_tokens'),
    cost_usd: sum('cost_usd'),
    billed_cost_usd: sum('billed_cost_usd'),
  }
}
