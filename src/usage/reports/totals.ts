import type { Sums } from './usage-report.js'
import { sumDecimals } from '../../lib/decimal.js'

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

/**
 * Rows per outcome from the period's totals (the rollups) and the rows that did not end 'ok' (the
 * raw ledger): 'ok' is the difference, exact. Most requests first, as the ledger's grouping orders them.
 */
export function withOkOutcome<T extends Sums & { key: string | null }> (totals: Sums, failed: readonly T[]): Array<Sums & { key: string | null }> {
  const notOk = totalsOf(failed)
  const minus = (c: Exclude<keyof Sums, 'requests'>): string => sumDecimals([totals[c], negate(notOk[c])])
  const ok = {
    key: 'ok',
    requests: totals.requests - notOk.requests,
    prompt_tokens: minus('prompt_tokens'),
    completion_tokens: minus('completion_tokens'),
    cached_tokens: minus('cached_tokens'),
    reasoning_tokens: minus('reasoning_tokens'),
    total_tokens: minus('total_tokens'),
    cost_usd: minus('cost_usd'),
    billed_cost_usd: minus('billed_cost_usd'),
  }
  const rows: Array<Sums & { key: string | null }> = ok.requests > 0 ? [ok, ...failed] : [...failed]
  return rows.sort((a, b) => b.requests - a.requests || String(a.key).localeCompare(String(b.key)))
}

function negate (v: string): string { return v.startsWith('-') ? v.slice(1) : `-${v}` }
