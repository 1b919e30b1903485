import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createLogger } from '../src/lib/log.js'
import { Reconciler, type FetchGeneration } from '../src/usage/ledger/reconcile.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'

const rec = (extra: Partial<UsageRecord> = {}): UsageRecord => ({
  eventId: randomUUID(), generationId: 'gen-rec-1', organizationId: 'o', userId: 'u', externalUserId: 'o_user_x',
  endpoint: 'messages', model: 'm', servedModel: null, provider: null, streamed: true, status: 200, outcome: 'client_aborted',
  finishReason: null, errorMessage: null, usageSource: 'inline', promptTokens: 12, completionTokens: 1, totalTokens: 13,
  cachedTokens: null, reasoningTokens: null, costUsd: null, upstreamCostUsd: null, isByok: null,
  markupPercent: '0', latencyMs: 1, ttfbMs: 1, chatId: null, kind: 'api', messageId: null, createdAt: new Date().toISOString(), ...extra,
})

/** What the reconciler wrote, and a promise for the first record it writes. */
class Written {
  readonly list: UsageRecord[] = []
  private wake: (() => void) | null = null
  readonly push = (r: UsageRecord): void => { this.list.push(r); this.wake?.() }
  /** The first record written, or a rejection after `timeoutMs`: a reconciler that never writes fails fast. */
  next (timeoutMs = 5000): Promise<UsageRecord> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nothing written within ${timeoutMs} ms`)), timeoutMs)
      const check = (): void => { if (this.list.length > 0) { clearTimeout(timer); resolve(this.list[0]) } else this.wake = check }
      check()
    })
  }
}

t.test('401/403 from /generation: gives up at once (the key cannot read generations), keeping the partial usage', async (t) => {
  for (const status of [401, 403]) {
    let lookups = 0
    const fetch: FetchGeneration = async () => { lookups++; return { status, body: '{"error":{}}' } }
    const out = new Written()
    // A minute of patience: only the give-up rule can end this quickly.
    const r = new Reconciler(fetch, out.push, createLogger('silent'), { maxWaitMs: 60_000, firstDelayMs: 1 })
    t.teardown(() => r.stop())
    r.enqueue(rec())
    const got = await out.next()
    t.equal(lookups, 1, `${status}: asked once`)
    t.equal(r.gaveUp, 1)
    t.equal(got.errorMessage, `generation lookup refused (${status})`)
    t.same([got.usageSource, got.promptTokens, got.costUsd], ['inline', 12, null], 'what was seen inline is kept')
  }
})

t.test('not found until the deadline, or the lookup itself failing: gives up and writes the record', async (t) => {
  let lookups = 0
  // Each lookup takes 40 ms of the reconciler's clock, however long the machine takes: waits of 5,
  // 10, 20 and 40 ms fit in 200 ms (the fourth ends at 200), the fifth lookup's 80 ms would not.
  let clock = 0
  const out = new Written()
  const fetch: FetchGeneration = async () => { clock += 40; if (++lookups % 2 === 0) throw new Error('socket hang up'); return { status: 404, body: '' } }
  const r = new Reconciler(fetch, out.push, createLogger('silent'), { maxWaitMs: 200, firstDelayMs: 5, now: () => clock })
  r.enqueue(rec())
  const got = await out.next()
  t.equal(lookups, 5, 'asked until the next wait would pass the deadline')
  t.match(got.errorMessage, /generation not found after 5 lookups \(last status 404\)/)
  t.equal(r.gaveUp, 1)
  t.equal(r.active, 0)
})

t.test('found: usage from /generation replaces the partial inline usage; insane numbers are flagged, not stored', async (t) => {
  const out = new Written()
  const body = '{"data":{"id":"gen-rec-1","model":"m-served","provider_name":"P","total_cost":-0.5,"native_tokens_prompt":12,"native_tokens_completion":3000000000}}'
  const r = new Reconciler(async () => ({ status: 200, body }), out.push, createLogger('silent'), { maxWaitMs: 5000, firstDelayMs: 1 })
  r.enqueue(rec())
  const got = await out.next()
  t.same([got.usageSource, got.costUsd, got.promptTokens, got.completionTokens, got.totalTokens, got.servedModel], ['generation', null, 12, null, null, 'm-served'])
  t.match(got.anomaly, /generation: costUsd -0\.5 is negative; completionTokens 3000000000 out of range; totalTokens 3000000012 out of range/)
})

t.test('stopped: nothing more is asked; the journal keeps the record pending for the next boot', async (t) => {
  let lookups = 0
  const out = new Written()
  const r = new Reconciler(async () => { lookups++; return { status: 404, body: '' } }, out.push, createLogger('silent'), { maxWaitMs: 5000, firstDelayMs: 1 })
  r.enqueue(rec())
  r.stop()
  t.equal(r.active, 0)
  r.enqueue(rec({ generationId: null }))
  t.equal(out.list.length, 1, 'a record without a generation id is written at once')
  t.equal(lookups, 0)
})
