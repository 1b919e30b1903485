import type { Logger } from '../lib/log.js'
import { mulDivUp, toUnits } from '../lib/decimal.js'

// Prices from OpenRouter's GET /models (decimal strings in USD per token, per image, per request),
// with each model's context_length and top_provider.max_completion_tokens; cached and refreshed
// hourly. A model missing from the list (or every model, while /models is unreachable) is priced
// at the configured ceiling, BUDGET_UNKNOWN_MODEL_USD_PER_MTOK, for prompt and completion.

export type FetchModels = () => Promise<{ status: number, body: string }>

/** A model's prices in 18-decimal units (lib/decimal.ts); null where /models lists none. */
export interface Price {
  prompt: bigint
  completion: bigint
  request: bigint
  /** Per input image. */
  image: bigint | null
  /** Per audio input token. */
  audio: bigint | null
  /** Per prompt token written to a cache: the higher of input_cache_write and input_cache_write_1h. */
  cacheWrite: bigint | null
  /** Per internal reasoning token. */
  reasoning: bigint | null
  /** The most tokens prompt and completion can hold together. */
  contextLength: number | null
  /** The most completion tokens the model's provider returns. */
  maxCompletionTokens: number | null
}

const HOUR = 3_600_000
const MILLION = 1_000_000n

export class PriceList {
  private prices = new Map<string, Price>()
  private timer: NodeJS.Timeout | null = null
  private readonly fallback: Price
  loadedAt: number | null = null

  constructor (private readonly fetchModels: FetchModels, unknownUsdPerMtok: string, private readonly log: Logger) {
    const perToken = mulDivUp(toUnits(unknownUsdPerMtok), 1n, MILLION)
    this.fallback = { prompt: perToken, completion: perToken, request: 0n, image: null, audio: null, cacheWrite: null, reasoning: null, contextLength: null, maxCompletionTokens: null }
  }

  private started: Promise<void> | null = null

  /** Loads now and then every hour; a failed load keeps the previous list. Later calls wait for the first load. */
  start (refreshMs = HOUR): Promise<void> {
    if (this.started) return this.started
    const first = this.started = this.refresh()
    this.timer = setInterval(() => { void this.refresh() }, refreshMs)
    this.timer.unref()
    return first
  }

  stop (): void { if (this.timer) clearInterval(this.timer) }

  /**
   * A variant OpenRouter does not list on its own (`vendor/model:nitro`, `:floor`, `:online`) is
   * priced as its base model; one it lists (`:free`, `:thinking`) at its own price.
   */
  price (model: string | null): Price {
    if (model === null) return this.fallback
    const own = this.prices.get(model)
    if (own) return own
    const colon = model.lastIndexOf(':')
    return (colon > 0 && this.prices.get(model.slice(0, colon))) || this.fallback
  }

  get size (): number { return this.prices.size }

  async refresh (): Promise<void> {
    try {
      const res = await this.fetchModels()
      if (res.status !== 200) throw new Error(`GET /models answered ${res.status}`)
      const data = (JSON.parse(res.body) as { data?: unknown }).data
      if (!Array.isArray(data)) throw new Error('GET /models: no data array')
      const next = new Map<string, Price>()
      for (const m of data as unknown[]) {
        const parsed = parseModel(m)
        if (parsed) next.set(parsed.id, parsed.price)
      }
      this.prices = next
      this.loadedAt = Date.now()
      this.log.debug({ models: next.size }, 'budgets: model prices loaded')
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'budgets: could not load model prices; unknown models are estimated at the ceiling')
    }
  }
}

/**
 * One entry of GET /models, or null when it has no usable prompt and completion price ("-1" marks
 * a router whose price depends on the model it picks: it keeps the ceiling).
 */
export function parseModel (m: unknown): { id: string, price: Price } | null {
  if (typeof m !== 'object' || m === null) return null
  const { id, pricing, context_length: context, top_provider: top } = m as Record<string, unknown>
  if (typeof id !== 'string' || typeof pricing !== 'object' || pricing === null) return null
  const p = pricing as Record<string, unknown>
  const prompt = unit(p.prompt)
  const completion = unit(p.completion)
  if (prompt === null || completion === null) return null
  const writes = [unit(p.input_cache_write), unit(p.input_cache_write_1h)].filter((w) => w !== null)
  return {
    id,
    price: {
      prompt,
      completion,
      request: unit(p.request) ?? 0n,
      image: unit(p.image),
      audio: unit(p.audio),
      cacheWrite: writes.length === 0 ? null : writes.reduce((a, b) => a > b ? a : b),
      reasoning: unit(p.internal_reasoning),
      contextLength: count(context),
      maxCompletionTokens: count(typeof top === 'object' && top !== null ? (top as Record<string, unknown>).max_completion_tokens : null),
    },
  }
}

/** A positive whole number of tokens, or null (/models lists null for an unknown limit). */
function count (v: unknown): number | null {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : null
}

function unit (v: unknown): bigint | null {
  if (typeof v !== 'string' && typeof v !== 'number') return null
  try { return toUnits(String(v)) } catch { return null }
}
