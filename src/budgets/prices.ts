import type { Logger } from '../log.js'
import { mulDivUp, toUnits } from './money.js'

// Per-token prices from OpenRouter's GET /models (decimal strings in USD per token), cached and
// refreshed hourly. A model missing from the list (or every model, while /models is unreachable)
// is priced at the configured ceiling, BUDGET_UNKNOWN_MODEL_USD_PER_MTOK, for prompt and completion.

export type FetchModels = () => Promise<{ status: number, body: string }>

interface Price { prompt: bigint, completion: bigint, request: bigint }

const HOUR = 3_600_000
const MILLION = 1_000_000n

export class PriceList {
  private prices = new Map<string, Price>()
  private timer: NodeJS.Timeout | null = null
  private readonly fallback: Price
  loadedAt: number | null = null

  constructor (private readonly fetchModels: FetchModels, unknownUsdPerMtok: string, private readonly log: Logger) {
    const perToken = mulDivUp(toUnits(unknownUsdPerMtok), 1n, MILLION)
    this.fallback = { prompt: perToken, completion: perToken, request: 0n }
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

  price (model: string | null): Price {
    return (model !== null && this.prices.get(model)) || this.fallback
  }

  get size (): number { return this.prices.size }

  async refresh (): Promise<void> {
    try {
      const res = await this.fetchModels()
      if (res.status !== 200) throw new Error(`GET /models answered ${res.status}`)
      const data = (JSON.parse(res.body) as { data?: unknown }).data
      if (!Array.isArray(data)) throw new Error('GET /models: no data array')
      const next = new Map<string, Price>()
      for (const m of data as Array<{ id?: unknown, pricing?: Record<string, unknown> }>) {
        if (typeof m?.id !== 'string' || !m.pricing) continue
        const p = unit(m.pricing.prompt)
        const c = unit(m.pricing.completion)
        // "-1" marks a router whose price depends on the model it picks: keep the ceiling.
        if (p === null || c === null) continue
        next.set(m.id, { prompt: p, completion: c, request: unit(m.pricing.request) ?? 0n })
      }
      this.prices = next
      this.loadedAt = Date.now()
      this.log.debug({ models: next.size }, 'budgets: model prices loaded')
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'budgets: could not load model prices; unknown models are estimated at the ceiling')
    }
  }
}

function unit (v: unknown): bigint | null {
  if (typeof v !== 'string' && typeof v !== 'number') return null
  try { return toUnits(String(v)) } catch { return null }
}
