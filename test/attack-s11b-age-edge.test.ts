import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createTestDb, withoutServer } from './support/db.js'
import { FakeStripe } from './support/billing-receivers.js'
import { seedLedger } from './support/seed.js'
import { LogSink } from './support/log-sink.js'
import { createLogger } from '../src/lib/log.js'
import { startExporter } from '../src/export/exporter.js'
import { stripeSink } from '../src/export/stripe-sink.js'
import { setCustomer } from '../src/export/billing-customers.js'
import { exportStatus } from '../src/export/status.js'

// A row near Stripe's own 35-day limit (inside the sink's one-hour margin when first sent) is sent,
// Stripe keeps it and the answer is lost. The retry comes two hours later (an outage, a
// handover): the attempt (sql/024) skips the sink's age check, so the row is sent again, but
// Stripe checks the timestamp before the identifier and answers "Timestamp must be within the
// past 35 days" instead of the duplicate answer. The sink takes that as a refusal: the row Stripe
// holds cannot be told from one it never got. It is set aside with a reason that says Stripe may
// hold it under the customer of the first send and names the identifier to look up before any
// replay; nothing is left behind in export_stripe_attempts. Stripe's clock and the sink's are the
// same clock here, moved forward together (the earlier attack lowered only the sink's limit).

const KEY = 'sk_test_exporttests0123456789'

const clock = Date.now // the real clock, for the test's own deadline

async function waitFor (what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = clock() + timeoutMs
  while (!(await check())) {
    if (clock() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

t.test('a lost answer near the 35-day edge, retried after the row passed Stripe\'s limit', async (t) => {
  if (await withoutServer(t, 'an exporter and its lease renewals on connections of their own')) return
  const org = 'mai_client_s11b_age'
  const db = await createTestDb({ migrated: true })
  const stripe = new FakeStripe(KEY)
  const url = await stripe.listen()
  const realNow = Date.now
  let offset = 0
  // One clock for the sidecar and the fake Stripe, moved forward when the answer is lost.
  Date.now = () => realNow() + offset
  t.teardown(async () => { Date.now = realNow; await stripe.close(); await db.drop() })
  await seedLedger(db.sql, { organizationId: org, rows: 0, from: '2026-01-01', days: 1 })
  const id = randomUUID()
  // 35 days less 1 h 5 min: the sink (limit 35 days less its 1 h margin) sends it.
  await db.sql`INSERT INTO usage_events (event_id, generation_id, organization_id, external_user_id, endpoint, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
    VALUES (${id}, ${'gen-s11b-' + id}, ${org}, 'x', 'chat/completions', false, 200, 'ok', 'inline', '0.0000006', '0', now() - interval '35 days' + interval '65 minutes')`
  await setCustomer(db.sql, org, 'organization', '', 'cus_a')
  let lost = 0
  stripe.loseAnswer = () => { if (lost > 0) return false; lost++; offset = 2 * 3600_000; return true }
  const sink = stripeSink({ sql: db.sql, organizationId: org, secretKey: KEY, apiBase: url, eventName: 'llm_usage', value: 'billed_micro_usd', now: () => Date.now() })
  const exporter = startExporter([sink], { sql: db.sql, organizationId: org, log: createLogger('warn', new LogSink()), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 10, maxMs: 50 } })
  t.teardown(() => exporter.stop())
  await waitFor('the export to catch up', async () => (await exportStatus(db.sql, org))[0]?.pending === 0)
  await exporter.stop()
  t.equal(lost, 1, 'the first send was kept by Stripe and its answer lost')
  t.ok(stripe.events.has('gen-s11b-' + id), 'Stripe holds the row')
  const [status] = await exportStatus(db.sql, org)
  t.equal(status.rowsSetAside, '1', 'the row is set aside: the sidecar cannot know whether Stripe holds it')
  t.match(status.setAside[0]?.reason, new RegExp(`Stripe may hold this event under cus_a .*identifier gen-s11b-${id} .*35 days`),
    'the reason says Stripe may hold it, under which customer, and which identifier to look up')
  const left = await db.sql`SELECT 1 FROM export_stripe_attempts`
  t.equal(left.length, 0, 'nothing left in export_stripe_attempts')
})
