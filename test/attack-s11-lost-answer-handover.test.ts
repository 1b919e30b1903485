import t from 'tap'
import { withoutServer } from './support/db.js'
import { KEY, books, exportWith, log, loseFirstAnswer, setup, waitFor } from './support/stripe-lost-answer.js'
import { startExporter } from '../src/export/exporter.js'
import { stripeSink } from '../src/export/stripe-sink.js'
import { setCustomer } from '../src/export/billing-customers.js'
import { exportStatus } from '../src/export/status.js'

// As attack-s11-lost-answer-retarget, across a handover: the exporter whose send got no answer
// stops (a deploy, a lease passing to another replica) after recording the retry, the row's
// customer mapping changes, and the next exporter (a new sink, another process) retries the row
// for the new customer. Stripe answers the duplicate; the new customer's totals take a row Stripe
// holds under the old one.


t.test('a handover between a lost answer and its retry, the mapping changed meanwhile', async (t) => {
  if (await withoutServer(t, 'an exporter and its lease renewals on connections of their own')) return
  const s = await setup(t, 'mai_client_s11_handover', 3, '2 hours', '1 hour')
  const lost = loseFirstAnswer(s)
  // The first exporter waits a minute before any retry: it is stopped long before that.
  const first = startExporter([stripeSink({ sql: s.db.sql, organizationId: s.org, secretKey: KEY, apiBase: s.url, eventName: 'llm_usage', value: 'billed_micro_usd', batchSize: 20 })],
    { sql: s.db.sql, organizationId: s.org, log: log(), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 60_000, maxMs: 60_000 } })
  t.teardown(() => first.stop())
  await waitFor('the lost answer to be recorded as a retry', async () => (await exportStatus(s.db.sql, s.org))[0]?.failures === '1')
  await first.stop()
  t.equal(s.stripe.posts.length, 1, 'only the first row was sent, once')
  await setCustomer(s.db.sql, s.org, 'organization', '', 'cus_b')
  await exportWith(t, s)
  t.equal(lost.size, 1, 'the first send was kept by Stripe and its answer lost')
  t.same(new Set(s.stripe.events.keys()), new Set([s.first, ...s.others]), 'every row is one event at Stripe')
  const b = await books(s)
  t.same(b.totals, b.stripe, 'export_stripe_totals says what Stripe holds, per customer and month')
  t.same(b.stripe, b.exact, 'what Stripe holds per customer and month is the rounded exact sum of its rows')
})
