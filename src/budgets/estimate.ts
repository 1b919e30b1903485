import { fromUnits, mulDivUp } from '../lib/decimal.js'
import type { PriceList } from './prices.js'
import type { PromptCounts } from './prompt-counts.js'

// What a request may cost, in billed USD, before it is sent: an upper bound, so that a budget
// holds whatever the request says. From the body's counts (prompt-counts.ts) and the model's
// entry in GET /models (prices.ts):
// - text tokens at the prompt price (the cache-write price when the body asks for caching and it
//   is higher);
// - an image at the model's per-image price, or, when it lists none, as BUDGET_IMAGE_TOKENS prompt
//   tokens; a remote image URL is an image too;
// - inline audio as one token per AUDIO_BYTES_PER_TOKEN decoded bytes (32 tokens a second, the
//   most any provider counts, of 8 kbit/s mp3, the leanest format accepted, with room to spare),
//   at the audio price or the prompt price, whichever is higher;
// - a file (a PDF) as one prompt token per decoded byte: its text and page images have no bound
//   short of the context window;
// - prompt tokens never above the model's context_length (filled with the dearest tokens first);
// - completion tokens as max_tokens / max_completion_tokens / max_output_tokens, or
//   BUDGET_DEFAULT_MAX_TOKENS, no more than the model's top_provider.max_completion_tokens, at the
//   completion price or the internal-reasoning price, whichever is higher;
// - plus the per-request price, times 1 + markup.

export interface EstimateInput {
  model: string | null
  counts: PromptCounts
  maxTokens: number | null
}

export interface EstimateOptions {
  defaultMaxTokens: number
  /** Prompt tokens an image counts as on a model that lists no per-image price. */
  imageTokens: number
  markupPercent: string
}

export const AUDIO_BYTES_PER_TOKEN = 16

export function estimateBilledUsd (input: EstimateInput, prices: PriceList, opts: EstimateOptions): string {
  const p = prices.price(input.model)
  const c = input.counts
  const max = (a: bigint, b: bigint | null): bigint => b !== null && b > a ? b : a

  const promptPrice = c.cacheWrite ? max(p.prompt, p.cacheWrite) : p.prompt
  const audioPrice = max(promptPrice, p.audio)
  const imagePriced = p.image !== null && p.image > 0n
  const audioTokens = BigInt(Math.ceil(c.audioBytes / AUDIO_BYTES_PER_TOKEN))
  let otherTokens = BigInt(c.textTokens) + BigInt(c.fileBytes) + (imagePriced ? 0n : BigInt(c.images) * BigInt(opts.imageTokens))
  let dearTokens = audioTokens
  if (p.contextLength !== null) {
    const room = BigInt(p.contextLength)
    if (dearTokens > room) dearTokens = room
    if (otherTokens > room - dearTokens) otherTokens = room - dearTokens
  }

  let completionTokens = input.maxTokens ?? opts.defaultMaxTokens
  if (p.maxCompletionTokens !== null && p.maxCompletionTokens < completionTokens) completionTokens = p.maxCompletionTokens

  const cost = otherTokens * promptPrice + dearTokens * audioPrice +
    (imagePriced ? BigInt(c.images) * p.image! : 0n) +
    BigInt(completionTokens) * max(p.completion, p.reasoning) + p.request
  // markup is a decimal percentage with at most 4 decimals (MARKUP_PERCENT)
  const [int, frac = ''] = opts.markupPercent.split('.')
  const markup = BigInt(int + frac.padEnd(4, '0'))
  return fromUnits(mulDivUp(cost, 1_000_000n + markup, 1_000_000n))
}

/**
 * The completion limit a request body names, if any: the largest of the three spellings, since
 * all of them go upstream and a provider may honour any one (the smallest would under-estimate).
 */
export function maxTokensOf (body: Record<string, unknown>): number | null {
  let most: number | null = null
  for (const k of ['max_completion_tokens', 'max_tokens', 'max_output_tokens']) {
    const v = body[k]
    if (typeof v === 'number' && Number.isInteger(v) && v > 0 && (most === null || v > most)) most = v
  }
  return most
}
