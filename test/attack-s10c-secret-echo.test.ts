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

// A receiver (or a proxy in front of it) that echoes the credential in its error body: the
// answer's text becomes the row's retry reason, which lands in the log, in export_cursors.last_error
// (Postgres, `export status`, the usage page) and in set-aside reasons. The secret must not.

const ORG = 'org_attack_s10c_secret'
const KEY = 'sk_live_attacks10csecret0123456789'
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

t.test('a credential echoed by the receiver stays out of logs, status and set-aside reasons', async (t) => {
  await setCustomer(db.sql, ORG, 'organization', '', 'cus_org')
  for (let i = 0; i < 2; i++) {
    const id = randomUUID()
    await db.sql`INSERT INTO usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
      VALUES (${id}, ${'gen-' + id}, ${ORG}, 'u-anna', 'x', 'chat/completions', 'm', false, 200, 'ok', 'inline', '0.002', '0', now() - interval '1 hour')`
  }
  // The first row: 401 echoing the header; the second: 400 (set aside) echoing the bare key.
  stripe.answer = (n) => n === 0
    ? { status: 401, body: `{"error":{"message":"Invalid API Key provided: Bearer ${KEY}"}}` }
    : n === 1 ? { status: 400, body: `{"error":{"message":"bad request for key ${KEY}"}}` } : null
  const logs = new LogSink()
  const sink = stripeSink({ sql: db.sql, organizationId: ORG, secretKey: KEY, apiBase: base, eventName: 'llm_usage', value: 'billed_micro_usd', batchSize: 1 })
  const exporter = startExporter([sink], { sql: db.sql, organizationId: ORG, log: createLogger('info', logs), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 10, maxMs: 50 } })
  await waitFor('the export to catch up', async () => (await exportStatus(db.sql, ORG))[0]?.pending === 0)
  const readings = JSON.stringify(exporter.readings())
  await exporter.stop()
  const [st] = await exportStatus(db.sql, ORG)
  t.ok(st.lastError?.includes('HTTP 401'), 'the 401 is reported')
  t.equal(st.setAside.length, 1, 'the 400 row is set aside')
  const everything = JSON.stringify(st) + readings + logs.text +
    JSON.stringify(await db.sql`SELECT * FROM export_cursors`) + JSON.stringify(await db.sql`SELECT * FROM export_set_aside`)
  t.notOk(everything.includes(KEY), 'the secret key appears nowhere')
  t.notOk(everything.includes(KEY.slice(8)), 'nor its tail')
})
