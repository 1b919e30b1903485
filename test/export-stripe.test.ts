import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createTestDb, withoutServer, type TestDb } from './support/db.js'
import { FakeStripe } from './support/billing-receivers.js'
import { ORG, seedLedger } from './support/seed.js'
import { LogSink } from './support/log-sink.js'
import { migrate } from '../src/db/migrate.js'
import { createLogger } from '../src/lib/log.js'
import { startExporter, type Exporter } from '../src/export/exporter.js'
import { stripeSink } from '../src/export/stripe-sink.js'
import { setCustomer } from '../src/export/billing-customers.js'
import { exportStatus } from '../src/export/status.js'
import { replay } from '../src/export/replay.js'
import { microUnits, nextUnits } from '../src/export/stripe-units.js'

// The Stripe meter-event sink against a local endpoint that parses the form as Stripe does:
// every billed row arrives once under its identifier, the sums per customer and month equal the
// ledger's to the unit, refusals are set aside without blocking the rest, 429's Retry-After is
// waited out, and an acknowledged row is never sent again by the exporter.

const KEY = 'sk_test_exporttests0123456789'
let db: TestDb
let stripe: FakeStripe
let base: string

t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, 'sql')
  stripe = new FakeStripe(KEY)
  base = await stripe.listen()
})
t.teardown(async () => { await stripe.close(); await db.drop() })

function daysAgo (n: number): string { return new Date(Date.now() - n * 86_400_000).toISOString().slice(0, 10) }

async function waitFor (what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

function run (value: 'billed_micro_usd' | 'tokens' = 'billed_micro_usd'): Exporter {
  const sink = stripeSink({ sql: db.sql, organizationId: ORG, secretKey: KEY, apiBase: base, eventName: 'llm_usage', value, batchSize: 50 })
  return startExporter([sink], { sql: db.sql, organizationId: ORG, log: createLogger('warn', new LogSink()), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 10, maxMs: 200 } })
}

/** The customer each row bills to, as documented: user's own, else first mapped group, else organization. */
const CUSTOMER_SQL = `CASE WHEN user_id = 'u-anna' THEN 'cus_anna' WHEN api_key_id = 'key_k1' THEN 'cus_key' WHEN 'g-sales' = ANY (groups) THEN 'cus_sales' ELSE 'cus_org' END`

t.test('every billed row arrives once, sums per customer and month equal the ledger to the unit', async (t) => {
  // The embedded database serves one session at a time: the exporter's reads, its lease renewals
  // and this test's checks queue behind each other, and the run outlasts the file's timeout.
  if (await withoutServer(t, 'an exporter and its lease renewals on connections of their own')) return
  await seedLedger(db.sql, { rows: 300, from: daysAgo(12), days: 10 })
  await db.sql`UPDATE usage_events SET groups = '{g-sales,g-zeta}' WHERE user_id IN ('u-bob', 'u-anna')`
  // Half of Bob's rows were made with a key that has a customer: the key wins over the group.
  await db.sql`UPDATE usage_events SET api_key_id = 'key_k1' WHERE user_id IN ('u-bob', 'u-anna') AND prompt_tokens % 2 = 0`
  // One row too old for Stripe: set aside, not sent.
  const oldId = randomUUID()
  await db.sql`INSERT INTO usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
    VALUES (${oldId}, ${'gen-old-' + oldId}, ${ORG}, 'u-chen', 'x', 'chat/completions', 'm', false, 200, 'ok', 'inline', '0.5', '12.5', now() - interval '40 days')`
  await setCustomer(db.sql, ORG, 'organization', '', 'cus_org')
  await setCustomer(db.sql, ORG, 'user', 'u-anna', 'cus_anna')
  await setCustomer(db.sql, ORG, 'group', 'g-sales', 'cus_sales')
  await setCustomer(db.sql, ORG, 'key', 'key_k1', 'cus_key')
  // The receiver: 500 for the first requests, one 429 with Retry-After, one row refused for good.
  const [refused] = await db.sql<{ id: string }[]>`SELECT coalesce(generation_id, event_id::text) AS id FROM usage_events WHERE organization_id = ${ORG} AND billed_cost_usd IS NOT NULL AND created_at > now() - interval '30 days' ORDER BY event_id LIMIT 1`
  let limitedAt: { id: string, at: number } | null = null
  const retried: number[] = []
  stripe.answer = (n, { identifier }) => {
    if (n < 3) return { status: 500, body: '{"error":{"message":"internal"}}' }
    if (identifier === refused.id) return { status: 400, body: '{"error":{"type":"invalid_request_error","message":"No such customer"}}' }
    if (n === 40) { limitedAt = { id: identifier!, at: Date.now() }; return { status: 429, headers: { 'retry-after': '1' } } }
    if (limitedAt !== null && identifier === limitedAt.id) retried.push(Date.now() - limitedAt.at)
    return null
  }
  const exporter = run()
  await waitFor('the export to catch up', async () => (await exportStatus(db.sql, ORG))[0]?.pending === 0)
  await exporter.stop()

  const billed = await db.sql<{ id: string, customer: string, month: string, micro: string }[]>`SELECT coalesce(generation_id, event_id::text) AS id,
      ${db.sql.unsafe(CUSTOMER_SQL)} AS customer, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM') AS month, (billed_cost_usd * 1000000)::text AS micro
    FROM usage_events WHERE organization_id = ${ORG} AND billed_cost_usd IS NOT NULL AND created_at > now() - interval '35 days'`
  const expectedIds = new Set(billed.map((b) => b.id).filter((id) => id !== refused.id))
  t.same(new Set(stripe.events.keys()), expectedIds, 'every billed row within 35 days arrived, the refused one excepted')
  t.equal(stripe.accepted.length, stripe.events.size, 'no identifier was delivered twice')
  t.same(stripe.repeats, [], 'and none was even sent twice')
  t.notOk(stripe.events.has(`gen-old-${oldId}`), 'the 40-day-old row was not sent')
  t.same(stripe.problems, [], 'every request followed the published shape')
  t.ok(retried.length >= 1 && retried[0] >= 1000, `the row answered 429 was retried after Retry-After (${retried[0]} ms)`)

  // Sums: per customer and month, the units sent are the ledger's exact micro-USD rounded once.
  const exact = new Map<string, string[]>()
  for (const b of billed) if (b.id !== refused.id) exact.set(`${b.customer}|${b.month}`, [...(exact.get(`${b.customer}|${b.month}`) ?? []), b.micro])
  const sent = new Map<string, bigint>()
  for (const e of stripe.events.values()) {
    const month = new Date(e.timestamp * 1000).toISOString().slice(0, 7)
    sent.set(`${e.customer}|${month}`, (sent.get(`${e.customer}|${month}`) ?? 0n) + BigInt(e.value))
  }
  t.same([...sent.keys()].sort(), [...exact.keys()].sort(), 'the same customers and months')
  for (const [k, micros] of exact) {
    const [{ r }] = await db.sql<{ r: string }[]>`SELECT round(sum(x::numeric))::text AS r FROM unnest(${micros}::text[]) x`
    t.equal(sent.get(k)?.toString(), r, `${k}: units sent = round(exact ledger micro-USD)`)
  }
  for (const c of ['cus_anna', 'cus_key', 'cus_sales', 'cus_org']) t.ok([...sent.keys()].some((k) => k.startsWith(`${c}|`)), `${c} was billed`)

  const [status] = await exportStatus(db.sql, ORG)
  t.equal(status.rowsSetAside, '2', 'two rows set aside')
  const reasons = status.setAside.map((s) => s.reason).join('\n')
  t.match(reasons, /35 days/, 'the old row says why')
  t.match(reasons, /No such customer/, 'the refused row carries Stripe\'s reason')
  t.notMatch(JSON.stringify(status), KEY, 'the secret key is nowhere in the status')

  // A new exporter over the same ledger sends nothing again.
  const before = stripe.requests
  const again = run()
  await waitFor('the second exporter to hold the lease and find nothing', async () => again.readings()[0].holding)
  await again.idle()
  await again.stop()
  t.equal(stripe.requests, before, 'an acknowledged row is never resent by the exporter')

  // A deliberate replay resends the set-aside row once the receiver takes it.
  stripe.answer = () => null
  const sink = stripeSink({ sql: db.sql, organizationId: ORG, secretKey: KEY, apiBase: base, eventName: 'llm_usage', value: 'billed_micro_usd', totals: 'fresh' })
  const r = await replay(db.sql, ORG, sink, new Date(Date.now() - 30 * 86_400_000).toISOString(), { maxAttempts: 3 })
  t.ok(stripe.events.has(refused.id), 'the refused row arrived on replay')
  t.equal(r.recoveredFromSetAside, 1, 'and left the set-aside list')
})

t.test('a send whose answer was lost is retried, and Stripe\'s duplicate answer acknowledges it: one event, exact units', async (t) => {
  // The file's database, under an organization of its own (its ledger, cursor and lease are apart).
  const org = 'mai_client_lost_answers'
  const fresh = db
  const receiver = new FakeStripe(KEY)
  const url = await receiver.listen()
  t.teardown(() => receiver.close())
  await seedLedger(fresh.sql, { organizationId: org, rows: 12, from: daysAgo(3), days: 2 })
  await setCustomer(fresh.sql, org, 'organization', '', 'cus_org')
  // The first send of every third row is kept by Stripe, but its answer never arrives.
  const lost = new Set<string>()
  let n = 0
  receiver.loseAnswer = (id) => { if (lost.has(id) || n++ % 3 !== 0) return false; lost.add(id); return true }
  const sink = stripeSink({ sql: fresh.sql, organizationId: org, secretKey: KEY, apiBase: url, eventName: 'llm_usage', value: 'billed_micro_usd', batchSize: 5 })
  const exporter = startExporter([sink], { sql: fresh.sql, organizationId: org, log: createLogger('warn', new LogSink()), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 10, maxMs: 50 } })
  t.teardown(() => exporter.stop())
  await waitFor('the export to catch up', async () => (await exportStatus(fresh.sql, org))[0]?.pending === 0)
  await exporter.stop()
  const ledger = await fresh.sql<{ id: string, micro: string }[]>`SELECT coalesce(generation_id, event_id::text) AS id, (billed_cost_usd * 1000000)::text AS micro
    FROM usage_events WHERE organization_id = ${org} AND billed_cost_usd IS NOT NULL`
  t.ok(lost.size > 0, `answers were lost (${lost.size})`)
  t.same(new Set(receiver.events.keys()), new Set(ledger.map((r) => r.id)), 'every billed row is one event at Stripe')
  t.equal(receiver.repeats.length, lost.size, 'each row whose answer was lost was sent once more, and no other')
  const [status] = await exportStatus(fresh.sql, org)
  t.equal(status.rowsSetAside, '0', 'a duplicate answer is a delivery, not a refusal')
  const [{ r }] = await fresh.sql<{ r: string }[]>`SELECT round(sum(x::numeric))::text AS r FROM unnest(${ledger.map((l) => l.micro)}::text[]) x`
  t.equal(String([...receiver.events.values()].reduce((a, e) => a + BigInt(e.value), 0n)), r, 'units kept = round(exact ledger micro-USD)')
})

t.test('rounding: running totals never drift more than half a unit', async (t) => {
  let total = { exact: '0', sent: 0n }
  const values: bigint[] = []
  for (let i = 0; i < 1000; i++) {
    const { units, after } = nextUnits(total, microUnits('0.0000004'))
    values.push(units)
    total = after
  }
  t.equal(values.reduce((a, b) => a + b, 0n), 400n, 'a thousand rows of 0.4 micro-USD send 400 units, not 0')
  t.equal(microUnits('0.014327574'), '14327.574')
  t.equal(microUnits('12'), '12000000')
  t.equal(microUnits('0.0000001'), '0.1')
})
