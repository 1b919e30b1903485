import type { Usage } from './extract.js'

// Upstream numbers are data from outside: a negative or astronomically large cost, or a token
// count no request can have, must neither be billed as is nor make Postgres refuse the row (and
// so drop it from usage_events). Such a number is left out (NULL) and named in `anomaly`.

/** More than any single generation can cost; above it the number is upstream's mistake. */
const MAX_COST_USD = 100_000
/** Digits of a plausible cost: more is a number nobody can bill (`1e400` written out). */
const MAX_COST_CHARS = 64
/** usage_events token columns are `integer`; no context window comes near this. */
const MAX_TOKENS = 2 ** 31 - 1
const COST_FIELDS = ['costUsd', 'upstreamCostUsd'] as const
const TOKEN_FIELDS = ['promptTokens', 'completionTokens', 'totalTokens', 'cachedTokens', 'reasoningTokens', 'cacheWriteTokens', 'audioTokens'] as const

export interface Checked { usage: Usage, anomaly: string | null }

export function checkUsage (usage: Usage): Checked {
  const problems: string[] = []
  let out = usage
  for (const k of COST_FIELDS) {
    const why = costProblem(usage[k])
    if (why) { problems.push(`${k} ${clip(usage[k]!)} ${why}`); out = { ...out, [k]: null } }
  }
  for (const k of TOKEN_FIELDS) {
    const v = usage[k]
    if (v !== null && v !== undefined && (!Number.isSafeInteger(v) || v < 0 || v > MAX_TOKENS)) {
      problems.push(`${k} ${clip(String(v))} out of range`)
      out = { ...out, [k]: null }
    }
  }
  return { usage: out, anomaly: problems.length > 0 ? problems.join('; ') : null }
}

function costProblem (v: string | null): string | null {
  if (v === null) return null
  if (v.length > MAX_COST_CHARS) return `has ${v.length} characters`
  const exp = /[eE]([+-]?\d+)$/.exec(v)
  if (exp && Math.abs(Number(exp[1])) > 100) return 'has an exponent beyond 100'
  const n = Number(v) // a bound check only: the stored digits are the text itself
  if (!Number.isFinite(n)) return 'is not a finite number'
  if (n < 0 || v.startsWith('-')) return n === 0 ? null : 'is negative'
  if (n > MAX_COST_USD) return `exceeds ${MAX_COST_USD}`
  return null
}

const clip = (s: string): string => (s.length > 24 ? `${s.slice(0, 20)}...(${s.length} chars)` : s)
