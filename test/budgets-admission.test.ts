import t from 'tap'
import { createServer, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { request } from 'undici'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { sumDecimals } from './support/fake-openrouter.js'
import { LogSink } from './support/log-sink.js'
import { createLogger } from '../src/lib/log.js'
import { loadConfig } from '../src/config/config.js'
import { migrate } from '../src/db/migrate.js'
import { upsertOrganization } from '../src/db/organizations.js'
import { Ledger } from '../src/usage/ledger/ledger.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'
import { Limits, type Admission } from '../src/budgets/limits.js'
import { PriceList } from '../src/budgets/prices.js'
import { setBudget } from '../src/budgets/store.js'
import { periodStart, resetsAt } from '../src/budgets/periods.js'
import { estimateBilledUsd, maxTokensOf } from '../src/budgets/estimate.js'
import { countPrompt, type PromptCounts } from '../src/budgets/prompt-counts.js'

// The admission on its own, against the real Postgres, with an injected clock: period rollover,
// the sweeper, the estimate, and no round trip at all while no budget exists.

const ORG = 'mai_client_admission'
const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'sql')
const config = loadConfig({ OPENROUTER_API_KEY: 'sk-or-v1-test-key-0123456789', OPENROUTER_EXTERNAL_USER: ORG, ORGANIZATION_NAME: 'Admission', BUDGET_REFRESH_MS: '60000' }).limits
const logs = new LogSink()
const log = createLogger('debug', logs)
let db: TestDb
let ledger: Ledger
let server: Server
let url: string
let clock = new Date('2026-11-30T23:59:00Z')
let handler: (res: ServerResponse) => void = (res) => res.end()

const prices = new PriceList(async () => ({
  status: 200,
  body: JSON.stringify({ data: [{ id: 'm/priced', pricing: { prompt: '0.000001', completion: '0.000002', request: '0.0001' } }, { id: 'm/router', pricing: { prompt: '-1', completion: '-1' } }] }),
}), '60', log)

t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, SQL_DIR)
  await upsertOrganization(db.sql, { id: ORG, name: 'Admission', markupPercent: '0' }, 'sk-or-v1-test-key-0123456789')
  ledger = new Ledger(db.sql, null, log, { batchSize: 100, flushMs: 5 })
  await prices.start()
  server = createServer((_req, res) => handler(res))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
t.teardown(async () => {
  prices.stop()
  ledger.close()
  server.close()
  await db.drop()
})

function rec (user: string, createdAt = clock, costUsd: string | null = null): UsageRecord {
  return {
    eventId: randomUUID(), generationId: null, organizationId: ORG, userId: user, externalUserId: `x-${user}`, endpoint: 'chat/completions',
    model: 'm/priced', servedModel: null, provider: null, streamed: false, status: 200, outcome: 'ok', finishReason: null, errorMessage: null,
    usageSource: costUsd ? 'inline' : 'none', promptTokens: null, completionTokens: null, totalTokens: null, cachedTokens: null, reasoningTokens: null,
    costUsd, upstreamCostUsd: null, isByok: null, markupPercent: '0', latencyMs: null, ttfbMs: null, chatId: null, kind: 'api', messageId: null,
    createdAt: createdAt.toISOString(),
  }
}

function makeLimits (extra: Partial<typeof config> = {}): Limits {
  const limits = new Limits({ sql: db.sql, record: (r) => ledger.record(r), log, config: { ...config, ...extra }, organizationId: ORG, markupPercent: '0', prices, alerts: null })
  t.teardown(() => limits.close())
  return limits
}

/** A JSON body whose prompt counts as `tokens` text tokens: 4 for `{"x":""}`, 1 + 1/3 per further digit in it. */
function bodyOf (tokens: number): Buffer {
  return Buffer.from(`{"x":"${'7'.repeat(3 * (tokens - 5) + 1)}"}`)
}
const BODY_100 = bodyOf(100)

/** Runs one admission inside a real HTTP exchange; returns what the client saw and the admission. */
async function admit (limits: Limits, r: UsageRecord, body = BODY_100, maxTokens: number | null = 100) {
  let admission: Admission | null | undefined
  handler = (res) => {
    if (!limits.needsAdmission(r)) { admission = undefined; res.end('direct'); return }
    void limits.admit(res, r, body, maxTokens).then((a) => { admission = a; if (a) res.end('admitted') })
  }
  const res = await request(url)
  return { status: res.statusCode, text: await res.body.text(), admission }
}

t.test('periods: UTC days, weeks from Monday, calendar months, total', async (t) => {
  const sunday = new Date('2026-11-29T23:59:59Z')
  t.equal(periodStart('day', sunday).toISOString(), '2026-11-29T00:00:00.000Z')
  t.equal(periodStart('week', sunday).toISOString(), '2026-11-23T00:00:00.000Z', 'Sunday belongs to the week of the Monday before')
  t.equal(periodStart('week', new Date('2026-11-30T00:00:00Z')).toISOString(), '2026-11-30T00:00:00.000Z')
  t.equal(resetsAt('week', sunday)!.toISOString(), '2026-11-30T00:00:00.000Z')
  t.equal(resetsAt('month', new Date('2026-12-31T12:00:00Z'))!.toISOString(), '2027-01-01T00:00:00.000Z')
  t.equal(resetsAt('total', sunday), null)
  for (const at of ['2026-11-29T23:59:59Z', '2026-03-01T00:00:00Z', '2024-02-29T13:00:00Z', '2027-01-03T10:00:00Z']) {
    for (const p of ['day', 'week', 'month', 'total'] as const) {
      const [row] = await db.sql`select budget_period_start(${p}, ${at}::timestamptz) as s`
      t.equal(row.s.toISOString(), periodStart(p, new Date(at)).toISOString(), `SQL and JS agree: ${p} of ${at}`)
    }
  }
})

t.test('the estimate: prompt counts, max_tokens or the default for the completion, markup, ceiling for unknown models', async (t) => {
  const text = (n: number): PromptCounts => ({ textTokens: n, images: 0, audioBytes: 0, files: 0, fileBytes: 0, cacheWrite: false })
  t.equal(countPrompt(BODY_100).textTokens, 100, 'the test body counts as 100 tokens')
  const opts = (defaultMaxTokens: number, markupPercent: string) => ({ defaultMaxTokens, imageTokens: 1000, markupPercent })
  t.equal(estimateBilledUsd({ model: 'm/priced', counts: text(100), maxTokens: 100 }, prices, opts(4096, '0')), '0.0004') // 100 × 1e-6 + 100 × 2e-6 + 1e-4
  t.equal(estimateBilledUsd({ model: 'm/priced', counts: text(101), maxTokens: null }, prices, opts(1000, '12.5')), '0.002476125') // (101e-6 + 2000e-6 + 1e-4) × 1.125
  t.equal(estimateBilledUsd({ model: 'nobody/knows', counts: text(1000), maxTokens: 1000 }, prices, opts(4096, '0')), '0.12') // 2000 tokens at $60 / M
  t.equal(estimateBilledUsd({ model: 'm/router', counts: text(1), maxTokens: 1 }, prices, opts(4096, '0')), '0.00012', 'a variable price is estimated at the ceiling')
  t.equal(maxTokensOf({ max_tokens: 50 }), 50)
  t.equal(maxTokensOf({ max_completion_tokens: 70, max_tokens: 50 }), 70)
  t.equal(maxTokensOf({ max_output_tokens: 9 }), 9)
  t.equal(maxTokensOf({ max_tokens: 'lots' }), null)
  // every spelling goes upstream: the largest bounds the answer, not the first
  t.equal(maxTokensOf({ max_completion_tokens: 5, max_tokens: 1_000_000 }), 1_000_000)
  t.equal(maxTokensOf({ max_tokens: 5, max_output_tokens: 900 }), 900)
})

t.test('no budget, no rate limit: nothing to admit, known synchronously, no database round trip', async (t) => {
  const limits = makeLimits()
  await limits.refresh()
  const res = await admit(limits, rec('nobody'))
  t.equal(res.admission, undefined, 'known at once: nothing was awaited')
  t.equal(res.text, 'direct')
})

t.test('a new period starts by itself: rollover with an injected clock', async (t) => {
  clock = new Date('2026-11-30T23:59:00Z')
  await setBudget(db.sql, ORG, 'user', 'rolly', '0.001', 'day')
  await setBudget(db.sql, ORG, 'user', 'weekly', '0.001', 'week')
  const limits = makeLimits()
  await limits.refresh()
  // what was spent just before midnight, recorded through the ledger (the trigger counts it)
  ledger.record(rec('rolly', new Date('2026-11-30T23:58:00Z'), '0.0009'))
  ledger.record(rec('weekly', new Date('2026-11-29T23:58:00Z'), '0.0009'))
  await rowsSoon(() => db.sql`select 1 from budget_counters where user_id = 'rolly' and spent_usd = 0.0009`)
  const before = await admit(limits, rec('rolly'))
  t.equal(before.status, 402)
  // $0.0009 of $0.001 spent: not used up, but this request's $0.0004 does not fit the $0.0001 left
  t.equal(JSON.parse(before.text).error.message, 'This request could cost up to $0.0004, and $0.0001 of your daily budget of $0.001 is left. ' +
    'Ask for a shorter answer (a smaller max_tokens) or send a shorter conversation. It resets on 2026-12-01 00:00 UTC.')
  const refusedRow = await rowsSoon(() => db.sql`select outcome, status, cost_usd from usage_events where user_id = 'rolly' and outcome = 'budget_exceeded'`)
  t.match(refusedRow, [{ outcome: 'budget_exceeded', status: 402, cost_usd: null }])
  clock = new Date('2026-12-01T00:00:01Z')
  const after = await admit(limits, rec('rolly'))
  t.equal(after.status, 200, 'the next day the budget is whole again')
  t.ok(after.admission, 'admitted')
  const [c] = await db.sql`select reserved_usd::text as r from budget_counters where user_id = 'rolly' and period_start = '2026-12-01'`
  t.equal(c.r, '0.0004', 'the estimate is held in the new period')
  // the week ran Monday 23 to Sunday 29: on Monday 30 the spend of Sunday is gone
  clock = new Date('2026-11-29T23:59:00Z')
  await rowsSoon(() => db.sql`select 1 from budget_counters where user_id = 'weekly' and spent_usd = 0.0009`)
  t.equal((await admit(limits, rec('weekly'))).status, 402, 'Sunday: still the old week')
  clock = new Date('2026-11-30T00:00:00Z')
  t.equal((await admit(limits, rec('weekly'))).status, 200, 'Monday: a new week')
})

t.test('the 402 says "used up" only once spend and the holds of requests in flight fill the budget', async (t) => {
  await setBudget(db.sql, ORG, 'user', 'wordy', '0.0008', 'total')
  const limits = makeLimits()
  await limits.refresh()
  const first = await admit(limits, rec('wordy'))
  const second = await admit(limits, rec('wordy'))
  t.same([first.status, second.status], [200, 200], 'two estimates of $0.0004 fill $0.0008 exactly')
  const third = await admit(limits, rec('wordy'))
  t.equal(third.status, 402)
  t.equal(JSON.parse(third.text).error.message, 'Your total budget of $0.0008 is used up ($0.00 spent, $0.0008 held by requests in progress). It does not reset.')
  first.admission!.done()
  second.admission!.done()
})

t.test('a reservation whose record never comes is released by the sweeper after its TTL', async (t) => {
  await setBudget(db.sql, ORG, 'user', 'crashy', '1', 'total')
  const limits = makeLimits({ reservationTtlMs: 1 })
  await limits.refresh()
  const r = rec('crashy')
  const served = await admit(limits, r)
  t.equal(served.status, 200)
  served.admission!.done() // the request ended; its record is what never comes
  const held = async () => (await db.sql`select reserved_usd::text as r from budget_counters where user_id = 'crashy' and period = 'total'`)[0].r
  t.equal(await held(), '0.0004')
  // A renewal that started before done() may still push the expiry once by its 1 ms TTL: sweep
  // until the hold is released (nothing renews it after done()).
  let released = 0
  for (const until = Date.now() + 10_000; released === 0 && Date.now() < until;) {
    released += await limits.sweep()
    if (released === 0) await new Promise((r) => setTimeout(r, 5))
  }
  t.equal(released, 1, 'one expired reservation released')
  t.equal(await held(), '0.0000', 'nothing held any more')
  // the record arrives after all (a journal replay): it counts as spend, and releases nothing twice
  ledger.record({ ...r, costUsd: '0.0003', usageSource: 'inline' })
  const settled = await rowsSoon(() => db.sql`select spent_usd::text as s, reserved_usd::text as r from budget_counters
                                              where user_id = 'crashy' and period = 'total' and spent_usd > 0`)
  t.same(settled.map((x) => [sumDecimals([x.s]), sumDecimals([x.r])]), [['0.0003', '0']])
  ledger.record({ ...r, costUsd: '0.0003', usageSource: 'inline' })
  await ledger.drain(5000)
  t.equal(await held(), '0.0000')
  const [again] = await db.sql`select spent_usd::text as s from budget_counters where user_id = 'crashy' and period = 'total'`
  t.equal(sumDecimals([again.s]), '0.0003', 'a replayed record is not counted twice')
})

t.test('a client that leaves while the admission waits is not dispatched, and its hold is let go', async (t) => {
  await setBudget(db.sql, ORG, 'user', 'leaver', '1', 'total')
  const limits = makeLimits()
  await limits.refresh()
  const r = rec('leaver')
  let outcome: Promise<Admission | null> | null = null
  const closed = new Promise<void>((resolve) => {
    handler = (res) => { res.once('close', () => resolve()); outcome = limits.admit(res, r, BODY_100, 100) }
  })
  // another transaction holds the user's counter: the admission waits on it
  let unlock!: () => void
  const locked = new Promise<void>((resolve) => {
    void db.sql.begin(async (tx) => {
      await tx`select 1 from budget_counters where user_id = 'leaver' for update`
      resolve()
      await new Promise<void>((r) => { unlock = r })
    })
  })
  await locked
  const ac = new AbortController()
  const pending = request(url, { signal: ac.signal }).catch(() => null)
  await rowsSoon(async () => (outcome ? [1] : []))
  ac.abort()
  await closed
  await pending
  unlock()
  t.equal(await outcome, null, 'not admitted')
  const rows = await rowsSoon(() => db.sql`select 1 from budget_counters where user_id = 'leaver' and reserved_usd = 0 and period = 'total'
                                           and not exists (select 1 from budget_reservations where event_id = ${r.eventId})`)
  t.equal(rows.length, 1, 'reservation released')
})
