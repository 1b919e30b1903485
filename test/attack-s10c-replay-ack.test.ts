import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createTestDb, type TestDb } from './support/db.js'
import { FakeStripe } from './support/billing-receivers.js'
import { LogSink } from './support/log-sink.js'
import { migrate } from '../src/db/migrate.js'
import { createLogger } from '../src/lib/log.js'
import { startExporter, type Exporter } from '../src/export/exporter.js'
import { stripeSink } from '../src/export/stripe-sink.js'
import { setCustomer } from '../src/export/billing-customers.js'
import { exportStatus } from '../src/export/status.js'
import { replay } from '../src/export/replay.js'

// A row set aside past the cursor (an earlier row of another customer waits on a 429 while this
// one has no customer yet), then delivered on purpose by `export replay` once the customer is
// mapped, is delivered: the exporter must not send it a second time when its cursor gets there.

const ORG = 'org_attack_s10c'
const KEY = 'sk_test_attacks10c0123456789'
let db: TestDb
let stripe: FakeStripe
let base: string

t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, 'sql')
  stripe = new FakeStripe(KEY)
  base = await stripe.listen()
  await db.sql`INSERT INTO organizations (id, name, markup_percent) VALUES (${ORG}, 'Attack', '0') ON CONFLICT DO NOTHING`
})
t.teardown(async () => { await stripe.close(); await db.drop() })

async function waitFor (what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const sink = (totals: 'stored' | 'fresh' = 'stored') => stripeSink({ sql: db.sql, organizationId: ORG, secretKey: KEY, apiBase: base, eventName: 'llm_usage', value: 'billed_micro_usd', batchSize: 10, totals })
const run = (): Exporter => startExporter([sink()], { sql: db.sql, organizationId: ORG, log: createLogger('warn', new LogSink()), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 10, maxMs: 50 } })

async function insert (user: string): Promise<string> {
  const id = randomUUID()
  // One transaction per row: the second row's inserting transaction id is above the first's.
  await db.sql`INSERT INTO usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
    VALUES (${id}, ${'gen-' + id}, ${ORG}, ${user}, 'x', 'chat/completions', 'm', false, 200, 'ok', 'inline', '0.001', '0', now() - interval '1 hour')`
  return 'gen-' + id
}

t.test('a row replayed out of the set-aside list past the cursor is not sent again by the exporter', async (t) => {
  await setCustomer(db.sql, ORG, 'user', 'u-anna', 'cus_anna')
  const a = await insert('u-anna')
  const b = await insert('u-chen') // no customer yet: set aside
  let limited = true
  stripe.answer = (_n, { identifier }) => identifier === a && limited ? { status: 429, headers: { 'retry-after': '0' } } : null
  let exporter = run()
  await waitFor('row b set aside while row a waits', async () =>
    (await db.sql`SELECT 1 FROM export_set_aside WHERE organization_id = ${ORG} AND sink = 'stripe'`).length === 1)
  await exporter.stop()
  t.equal(stripe.posts.filter((e) => e.identifier === a).length, 0, 'row a is still waiting')

  await setCustomer(db.sql, ORG, 'user', 'u-chen', 'cus_chen')
  const r = await replay(db.sql, ORG, sink('fresh'), new Date(Date.now() - 86_400_000).toISOString(), { maxAttempts: 3 })
  t.equal(r.recoveredFromSetAside, 1, 'the replay delivered the set-aside row')

  limited = false
  exporter = run()
  await waitFor('the export to catch up', async () => (await exportStatus(db.sql, ORG))[0]?.pending === 0)
  await exporter.stop()
  t.equal(stripe.posts.filter((e) => e.identifier === a).length, 1, 'row a delivered once')
  t.equal(stripe.posts.filter((e) => e.identifier === b).length, 1, 'row b delivered once: by the replay, not again by the exporter')
  const [acks] = await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM export_acks WHERE organization_id = ${ORG}`
  t.equal(acks.n, 0, 'no acknowledgement is left behind the cursor')
})
