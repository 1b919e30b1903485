import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createTestDb, type TestDb } from './support/db.js'
import { FakeStripe } from './support/billing-receivers.js'
import { LogSink } from './support/log-sink.js'
import { migrate } from '../src/db/migrate.js'
import { createLogger } from '../src/lib/log.js'
import { startExporter } from '../src/export/exporter.js'
import { stripeSink } from '../src/export/stripe-sink.js'
import { setCustomer } from '../src/export/billing-customers.js'
import { exportStatus } from '../src/export/status.js'
import { forgetUser } from '../src/audit/forget.js'

// Forgetting a user rewrites their ledger rows to a pseudonym. Rows not yet exported (and rows
// the journal brings in after the forget) are still that person's usage: Stripe must bill them
// to the customer the user was mapped to, not fall through to the organization's customer.

const ORG = 'org_attack_s10c_forget'
const KEY = 'sk_test_attacks10cforget0123'
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

t.test('rows of a forgotten user still bill to the customer the user was mapped to', async (t) => {
  await setCustomer(db.sql, ORG, 'organization', '', 'cus_org')
  await setCustomer(db.sql, ORG, 'user', 'u-anna', 'cus_anna')
  const id = randomUUID()
  await db.sql`INSERT INTO user_mappings (organization_id, user_id, external_user_id, user_name) VALUES (${ORG}, 'u-anna', 'ext-anna', 'Anna')`
  await db.sql`INSERT INTO usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
    VALUES (${id}, ${'gen-' + id}, ${ORG}, 'u-anna', 'ext-anna', 'chat/completions', 'm', false, 200, 'ok', 'inline', '0.002', '0', now() - interval '1 hour')`
  const f = await forgetUser(db.sql, ORG, 'u-anna', 'test')
  t.ok(f?.pseudonym, 'the user is forgotten')
  const [left] = await db.sql<{ n: number }[]>`SELECT count(*)::int AS n FROM billing_customers WHERE organization_id = ${ORG} AND subject = 'u-anna'`
  t.equal(left.n, 0, 'no mapping names the forgotten user any more')

  const sink = stripeSink({ sql: db.sql, organizationId: ORG, secretKey: KEY, apiBase: base, eventName: 'llm_usage', value: 'billed_micro_usd', batchSize: 10 })
  const exporter = startExporter([sink], { sql: db.sql, organizationId: ORG, log: createLogger('warn', new LogSink()), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 10, maxMs: 50 } })
  await waitFor('the export to catch up', async () => (await exportStatus(db.sql, ORG))[0]?.pending === 0)
  await exporter.stop()
  const sent = stripe.posts.filter((e) => e.identifier === 'gen-' + id)
  t.equal(sent.length, 1, 'the row is delivered once')
  t.equal(sent[0]?.customer, 'cus_anna', "billed to the user's customer, not the organization's")
})
