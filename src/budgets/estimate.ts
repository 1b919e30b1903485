import { fromUnits, mulDivUp } from './money.js'
import type { PriceList } from './prices.js'

// What a request may cost, in billed USD, before it is sent. The prompt is counted as the request
// body's bytes / 4 (no parsing, and never less than the text: JSON punctuation and non-ASCII
// characters only add bytes), the completion as max_tokens / max_completion_tokens /
// max_output_tokens or BUDGET_DEFAULT_MAX_TOKENS; times the model's prices, times 1 + markup.

export interface EstimateInput {
  model: string | null
  bodyBytes: number
  maxTokens: number | null
}

export function estimateBilledUsd (input: EstimateInput, prices: PriceList, defaultMaxTokens: number, markupPercent: string): string {
  const p = prices.price(input.model)
  const promptTokens = BigInt(Math.ceil(input.bodyBytes / 4))
  const completionTokens = BigInt(input.maxTokens ?? defaultMaxTokens)
  const cost = promptTokens * p.prompt + completionTokens * p.completion + p.request
  // markup is a decimal percentage with at most 4 decimals (MARKUP_PERCENT)
  const [int, frac = ''] = markupPercent.split('.')
  const markup = BigInt(int + frac.padEnd(4, '0'))
  return fromUnits(mulDivUp(cost, 1_000_000n + markup, 1_000_000n))
}

/** The completion limit a request body names, if any (the first of the three spellings). */
export function maxTokensOf (body: Record<string, unknown>): number | null {
  for (const k of ['max_completion_tokens', 'max_tokens', 'max_output_tokens']) {
    const v = body[k]
    if (typeof v === 'number' && Number.isInteger(v) && v > 0) return v
  }
  return null
}
