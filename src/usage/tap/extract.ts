import { count, decimal, rawNumber, type ExactJson } from './exact-json.js'

// One normalized shape for the usage objects of every OpenRouter endpoint: chat and legacy
// completions (prompt_/completion_tokens), Responses (input_/output_tokens), Messages (Anthropic
// names) and embeddings. Costs stay decimal strings; token counts are integers.

export interface Usage {
  promptTokens: number | null
  completionTokens: number | null
  totalTokens: number | null
  cachedTokens: number | null
  reasoningTokens: number | null
  costUsd: string | null
  upstreamCostUsd: string | null
  isByok: boolean | null
  /** Present only when the usage object reports them (absent: unknown). */
  cacheWriteTokens?: number | null
  audioTokens?: number | null
}

type Obj = { [key: string]: ExactJson }
const obj = (v: unknown): Obj | undefined => (v !== null && typeof v === 'object' && !Array.isArray(v) ? v as Obj : undefined)
const first = <T>(...vs: Array<T | undefined>): T | null => { for (const v of vs) if (v !== undefined) return v; return null }

/**
 * `raw` is a usage object, parsed either exactly (numbers kept as text) or natively; with a native
 * parse, `source` is the JSON text it came from, and the costs' exact digits are read back from it.
 */
export function normalizeUsage (raw: unknown, source?: string): Usage | null {
  const u = obj(raw)
  if (!u) return null
  const promptDetails = obj(u.prompt_tokens_details) ?? obj(u.input_tokens_details)
  const completionDetails = obj(u.completion_tokens_details) ?? obj(u.output_tokens_details)
  const costDetails = obj(u.cost_details)
  const prompt = first(count(u.prompt_tokens), count(u.input_tokens))
  const completion = first(count(u.completion_tokens), count(u.output_tokens))
  const usage: Usage = {
    promptTokens: prompt,
    completionTokens: completion,
    totalTokens: first(count(u.total_tokens), prompt !== null && completion !== null ? prompt + completion : undefined),
    cachedTokens: first(count(promptDetails?.cached_tokens), count(u.cache_read_input_tokens)),
    reasoningTokens: first(count(completionDetails?.reasoning_tokens)),
    costUsd: exactCost(u.cost, 'cost', source),
    upstreamCostUsd: exactCost(costDetails?.upstream_inference_cost, 'upstream_inference_cost', source),
    isByok: typeof u.is_byok === 'boolean' ? u.is_byok : null,
  }
  // Tokens written to the provider's prompt cache (priced above input) and audio input tokens.
  const cacheWrite = first(count(promptDetails?.cache_write_tokens), count(u.cache_creation_input_tokens))
  if (cacheWrite !== null) usage.cacheWriteTokens = cacheWrite
  const audio = first(count(promptDetails?.audio_tokens))
  if (audio !== null) usage.audioTokens = audio
  // upstream_inference_cost is filled on non-BYOK calls too, where it is OpenRouter's own cost
  // and already inside `cost`: kept only for BYOK, where it is what the provider charged.
  if (usage.isByok === false) usage.upstreamCostUsd = null
  const known = usage.promptTokens !== null || usage.completionTokens !== null || usage.totalTokens !== null || usage.costUsd !== null
  return known ? usage : null
}

/**
 * A cost's exact digits, or null. After a native parse they can only come from the text: when they
 * cannot be read back the cost is unknown (and looked up with /generation), never String(double).
 */
function exactCost (v: unknown, key: string, source: string | undefined): string | null {
  return (source === undefined ? decimal(v) : rawNumber(source, key, v)) ?? null
}

/** Later fields win where present: Anthropic-style streams report input and output in two events. */
export function mergeUsage (earlier: Usage | null, later: Usage | null): Usage | null {
  if (!earlier) return later
  if (!later) return earlier
  const pick = <K extends keyof Usage>(k: K): Usage[K] => (later[k] ?? earlier[k]) as Usage[K]
  const merged: Usage = {
    promptTokens: pick('promptTokens'),
    completionTokens: pick('completionTokens'),
    totalTokens: later.totalTokens ?? null,
    cachedTokens: pick('cachedTokens'),
    reasoningTokens: pick('reasoningTokens'),
    costUsd: pick('costUsd'),
    upstreamCostUsd: pick('upstreamCostUsd'),
    isByok: pick('isByok'),
  }
  for (const k of ['cacheWriteTokens', 'audioTokens'] as const) {
    const v = later[k] ?? earlier[k]
    if (v !== undefined && v !== null) merged[k] = v
  }
  if (merged.totalTokens === null && merged.promptTokens !== null && merged.completionTokens !== null) {
    merged.totalTokens = merged.promptTokens + merged.completionTokens
  }
  return merged
}

/** Where the usage object sits in a parsed event or body, by endpoint shape. */
export function findUsage (o: { [key: string]: unknown }): unknown {
  if (o.usage !== undefined && o.usage !== null) return o.usage
  const response = obj(o.response) // Responses API: response.completed carries response.usage
  if (response?.usage) return response.usage
  const message = obj(o.message) // Messages API: message_start carries message.usage
  if (message?.usage) return message.usage
  return undefined
}
