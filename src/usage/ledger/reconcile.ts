import type { Logger } from '../../lib/log.js'
import { count, decimal, parseExact, type ExactJson } from '../tap/exact-json.js'
import type { Usage } from '../tap/extract.js'
import { withUsage, type UsageRecord } from './record.js'

// A generation whose usage never arrived inline (client abort, broken stream, crash) is asked for
// with GET /generation?id=..., which answers 404 for a while after the request ends. Retries back
// off from 250 ms to 8 s until maxWaitMs; after that the record is written without usage
// (usage_source = 'none'), so nothing waits forever and nothing is lost.

export type FetchGeneration = (id: string) => Promise<{ status: number, body: string }>

export interface ReconcileOptions {
  maxWaitMs: number
  firstDelayMs?: number
  /** The clock the deadline is kept by (Date.now). */
  now?: () => number
}

export interface GenerationFacts { usage: Usage | null, servedModel: string | null, provider: string | null, finishReason: string | null, cancelled?: boolean }

type Obj = { [key: string]: ExactJson }
const asObj = (v: unknown): Obj | undefined => (v !== null && typeof v === 'object' && !Array.isArray(v) ? v as Obj : undefined)
const text = (v: unknown): string | null => (typeof v === 'string' && v !== '' ? v : null)
const firstCount = (...vs: unknown[]): number | null => { for (const v of vs) { const c = count(v); if (c !== undefined) return c } return null }

export function factsFromGeneration (body: string): GenerationFacts | null {
  const data = asObj(asObj(parseExact(body))?.data)
  if (!data) return null
  const prompt = firstCount(data.native_tokens_prompt, data.tokens_prompt)
  const completion = firstCount(data.native_tokens_completion, data.tokens_completion)
  const cost = decimal(data.total_cost)
  const usage: Usage | null = cost === undefined && prompt === null && completion === null
    ? null
    : {
        promptTokens: prompt,
        completionTokens: completion,
        totalTokens: prompt !== null && completion !== null ? prompt + completion : null,
        cachedTokens: firstCount(data.native_tokens_cached),
        reasoningTokens: firstCount(data.native_tokens_reasoning),
        costUsd: cost ?? null,
        upstreamCostUsd: data.is_byok === false ? null : decimal(data.upstream_inference_cost) ?? null,
        isByok: typeof data.is_byok === 'boolean' ? data.is_byok : null,
      }
  const facts: GenerationFacts = { usage, servedModel: text(data.model), provider: text(data.provider_name), finishReason: text(data.finish_reason) }
  if (typeof data.cancelled === 'boolean') facts.cancelled = data.cancelled // OpenRouter stopped the generation
  return facts
}

export class Reconciler {
  private readonly inFlight = new Set<NodeJS.Timeout>()
  private stopped = false
  reconciled = 0
  gaveUp = 0

  constructor (
    private readonly fetchGeneration: FetchGeneration,
    private readonly write: (r: UsageRecord) => void,
    private readonly log: Logger,
    private readonly opts: ReconcileOptions,
  ) {}

  get active (): number { return this.inFlight.size }

  /** Looks the generation up until it is found or time runs out, then writes the record. */
  enqueue (rec: UsageRecord): void {
    if (!rec.generationId) { this.write(rec); return }
    const now = this.opts.now ?? Date.now
    const started = now()
    let attempt = 0
    const tryOnce = async (): Promise<void> => {
      if (this.stopped) return // the journal keeps it pending; the next boot reconciles it
      attempt++
      let status = 0
      try {
        const res = await this.fetchGeneration(rec.generationId!)
        status = res.status
        if (status === 200) {
          const facts = factsFromGeneration(res.body)
          if (facts) {
            this.reconciled++
            this.write({
              ...withUsage(rec, facts.usage, 'generation'),
              servedModel: rec.servedModel ?? facts.servedModel,
              provider: rec.provider ?? facts.provider,
              finishReason: rec.finishReason ?? facts.finishReason,
              cancelled: facts.cancelled ?? rec.cancelled ?? null,
            })
            return
          }
        }
        // 401/403: the key cannot read generations; waiting will not change that.
        if (status === 401 || status === 403) { this.giveUp(rec, `generation lookup refused (${status})`); return }
      } catch (err) {
        status = -1
        this.log.debug({ generationId: rec.generationId, err: (err as Error).message }, 'reconcile: lookup failed')
      }
      const delay = Math.min((this.opts.firstDelayMs ?? 250) * 2 ** (attempt - 1), 8000)
      if (now() + delay - started > this.opts.maxWaitMs) {
        this.giveUp(rec, `generation not found after ${attempt} lookups (last status ${status})`)
        return
      }
      this.later(tryOnce, delay)
    }
    this.later(tryOnce, this.opts.firstDelayMs ?? 250)
  }

  /** Stops looking; records still unreconciled stay pending in the journal for the next boot. */
  stop (): void {
    this.stopped = true
    for (const t of this.inFlight) clearTimeout(t)
    this.inFlight.clear()
  }

  private later (fn: () => Promise<void>, ms: number): void {
    const t = setTimeout(() => { this.inFlight.delete(t); void fn() }, ms)
    this.inFlight.add(t)
  }

  private giveUp (rec: UsageRecord, why: string): void {
    this.gaveUp++
    this.log.warn({ generationId: rec.generationId, why }, 'reconcile: writing record without usage')
    this.write({ ...rec, errorMessage: rec.errorMessage ?? why })
  }
}
