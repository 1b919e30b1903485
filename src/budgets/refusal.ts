import type { ServerResponse } from 'node:http'
import type { BudgetPeriod } from '../config/config.js'
import { formatUsd, fromUnits, toUnits } from '../lib/decimal.js'
import { sendError, type ErrorType } from '../lib/errors.js'
import { ADJECTIVE, humanTime, resetsAt } from './periods.js'

// What the person in the chat reads. Open WebUI shows error.message of a JSON error that arrives
// before the stream starts, so every refusal is one such body, sent before any upstream byte.

export const DEFAULT_EXCEEDED_MESSAGE = '{reason} {advice} {reset}'

export interface ExceededFacts {
  scope: 'organization' | 'user' | 'default-user' | 'group' | 'key'
  /** The group or API key id, for those scopes. */
  subject?: string | null
  limitUsd: string
  spentUsd: string
  /** Held by this budget's other requests in flight when this one was refused. */
  reservedUsd: string
  /** What this request could cost at most (its reservation): the amount that did not fit. */
  estimateUsd: string
  period: BudgetPeriod
  periodStart: Date
}

/** Whether spend and the other requests' holds already fill the budget: nothing smaller would fit. */
export function usedUp (f: Pick<ExceededFacts, 'limitUsd' | 'spentUsd' | 'reservedUsd'>): boolean {
  return toUnits(f.spentUsd) + toUnits(f.reservedUsd) >= toUnits(f.limitUsd)
}

/** limit − spent − reserved, never below zero. */
export function leftUsd (f: Pick<ExceededFacts, 'limitUsd' | 'spentUsd' | 'reservedUsd'>): string {
  const left = toUnits(f.limitUsd) - toUnits(f.spentUsd) - toUnits(f.reservedUsd)
  return fromUnits(left > 0n ? left : 0n)
}

/** A group or key id as the message quotes it: control characters out, bounded. */
function quoted (id: string | null | undefined): string {
  const s = (id ?? '').replace(/[\u0000-\u001f\u007f]/g, '')
  return `'${s.length > 80 ? s.slice(0, 79) + '…' : s}'`
}

/**
 * Placeholders: {scope} "Your", "The organization's", "The 'physics' group's" or "The 'k1' API
 * key's", {period} daily/weekly/monthly/total,
 * {limit} {spent} {reserved} (held by requests in flight) {left} (limit − spent − reserved) and
 * {estimate} (what this request could cost) in dollars (formatUsd), {resets_at}
 * "2026-12-01 00:00 UTC" (or "never"), {reset} "It resets on 2026-12-01 00:00 UTC." (or "It does
 * not reset."), {reason} the sentence saying why (the budget is used up, or this request could
 * cost more than is left), {advice} what to do when a smaller request would fit (empty when the
 * budget is used up). An empty placeholder takes the space after it along.
 */
export function exceededMessage (template: string, f: ExceededFacts): string {
  const resets = resetsAt(f.period, f.periodStart)
  const limit = formatUsd(f.limitUsd)
  const Whose = f.scope === 'organization' ? 'The organization\'s' : f.scope === 'group' ? `The ${quoted(f.subject)} group's` : f.scope === 'key' ? `The ${quoted(f.subject)} API key's` : 'Your'
  // The budget as the reason names it: whose, which period, how much.
  const owner = f.scope === 'group' ? ` for group ${quoted(f.subject)}` : f.scope === 'key' ? ` for API key ${quoted(f.subject)}` : ''
  const Budget = owner ? `The ${ADJECTIVE[f.period]} budget of ${limit}${owner}` : `${Whose} ${ADJECTIVE[f.period]} budget of ${limit}`
  const budget = owner ? Budget.replace(/^The/, 'the') : `${f.scope === 'organization' ? 'the organization\'s' : 'your'} ${ADJECTIVE[f.period]} budget of ${limit}`
  const full = usedUp(f)
  const spent = formatUsd(f.spentUsd)
  const reserved = formatUsd(f.reservedUsd)
  const left = formatUsd(leftUsd(f))
  const estimate = formatUsd(f.estimateUsd)
  const held = toUnits(f.reservedUsd) > 0n ? `, ${reserved} held by requests in progress` : ''
  const values: Record<string, string> = {
    scope: Whose,
    period: ADJECTIVE[f.period],
    limit,
    spent,
    reserved,
    left,
    estimate,
    resets_at: resets ? humanTime(resets) : 'never',
    reset: resets ? `It resets on ${humanTime(resets)}.` : 'It does not reset.',
    reason: full
      ? `${Budget} is used up (${spent} spent${held}).`
      : `This request could cost up to ${estimate}, and ${left} of ${budget} is left.`,
    advice: full ? '' : 'Ask for a shorter answer (a smaller max_tokens) or send a shorter conversation.',
  }
  return template.replace(/\{(\w+)\}( ?)/g, (all, name: string, space: string) => {
    const v = values[name]
    if (v === undefined) return all
    return v === '' ? '' : v + space
  }).trim()
}

export interface Refusal {
  status: number
  type: ErrorType
  code: string
  message: string
  headers?: Record<string, string>
}

/** OpenAI's error shape, `param` included, as its SDK parses it into an APIError. */
export function sendRefusal (res: ServerResponse, r: Refusal): void {
  sendError(res, r.status, r.type, r.code, r.message, r.headers, null)
}
