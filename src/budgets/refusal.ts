import type { ServerResponse } from 'node:http'
import type { BudgetPeriod } from '../config/config.js'
import { dollars } from './money.js'
import { ADJECTIVE, humanTime, resetsAt } from './periods.js'

// What the person in the chat reads. Open WebUI shows error.message of a JSON error that arrives
// before the stream starts, so every refusal is one such body, sent before any upstream byte.

export const DEFAULT_EXCEEDED_MESSAGE = '{scope} {period} budget of {limit} is used up ({spent} spent). {reset}'

export interface ExceededFacts {
  scope: 'organization' | 'user' | 'default-user'
  limitUsd: string
  spentUsd: string
  period: BudgetPeriod
  periodStart: Date
}

/**
 * Placeholders: {scope} "Your" or "The organization's", {period} daily/weekly/monthly/total,
 * {limit} and {spent} in dollars and cents, {resets_at} "2026-12-01 00:00 UTC" (or "never"),
 * {reset} "It resets on 2026-12-01 00:00 UTC." (or "It does not reset.").
 */
export function exceededMessage (template: string, f: ExceededFacts): string {
  const resets = resetsAt(f.period, f.periodStart)
  const values: Record<string, string> = {
    scope: f.scope === 'organization' ? 'The organization\'s' : 'Your',
    period: ADJECTIVE[f.period],
    limit: dollars(f.limitUsd),
    spent: dollars(f.spentUsd),
    resets_at: resets ? humanTime(resets) : 'never',
    reset: resets ? `It resets on ${humanTime(resets)}.` : 'It does not reset.',
  }
  return template.replace(/\{(\w+)\}/g, (all, name: string) => values[name] ?? all)
}

export interface Refusal {
  status: number
  type: string
  code: string
  message: string
  headers?: Record<string, string>
}

/** OpenAI's error shape, `param` included, as its SDK parses it into an APIError. */
export function sendRefusal (res: ServerResponse, r: Refusal): void {
  if (res.headersSent || res.destroyed) { res.destroy(); return }
  const body = JSON.stringify({ error: { message: r.message, type: r.type, code: r.code, param: null } })
  res.writeHead(r.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...r.headers })
  res.end(body)
}
