import t from 'tap'
import { withoutServer, type TestDb } from './support/db.js'
import { books, exportWith, loseFirstAnswer, setup } from './support/stripe-lost-answer.js'
import { exportStatus } from '../src/export/status.js'

// A send whose answer was lost: Stripe kept the event under the customer and value of that first
// send. The retry is answered "An event already exists with identifier ...", which the sink takes
// as delivered. If, between the two sends, the row's customer mapping changed or was removed, or
// the row crossed the sink's age limit, the retry is computed for a different customer (or not
// sent at all and set aside): the exporter's running totals (export_stripe_totals) no longer say
// what Stripe holds, the units sent to the new customer are off by more than half a unit, and a
// row Stripe counted is listed as set aside.

/**
 * Stands in for an administrator acting between the lost answer and the retry: when the
 * exporter records the failed batch (failures goes up), `action` runs in that transaction.
 */
async function onFirstFailure (db: TestDb, action: string): Promise<void> {
  await db.sql.unsafe(`CREATE FUNCTION s11_on_failure() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.failures = 1 AND OLD.failures = 0 THEN ${action}; END IF; RETURN NEW; END $$;
    CREATE TRIGGER s11_on_failure AFTER UPDATE ON export_cursors FOR EACH ROW EXECUTE FUNCTION s11_on_failure();`)
}

t.test('the customer mapping changes between a lost answer and its retry', async (t) => {
  if (await withoutServer(t, 'an exporter and its lease renewals on connections of their own')) return
  const s = await setup(t, 'mai_client_s11_remap', 3, '2 hours', '1 hour')
  await onFirstFailure(s.db, `UPDATE billing_customers SET stripe_customer_id = 'cus_b' WHERE organization_id = '${s.org}' AND scope = 'organization'`)
  const lost = loseFirstAnswer(s)
  await exportWith(t, s)
  t.equal(lost.size, 1, 'the first send was kept by Stripe and its answer lost')
  t.same(new Set(s.stripe.events.keys()), new Set([s.first, ...s.others]), 'every row is one event at Stripe')
  t.equal(s.stripe.events.get(s.first)?.customer, 'cus_a', 'Stripe holds the first row under the customer of its first send')
  const b = await books(s)
  t.same(b.totals, b.stripe, 'export_stripe_totals says what Stripe holds, per customer and month')
  t.same(b.stripe, b.exact, 'what Stripe holds per customer and month is the rounded exact sum of its rows')
  const [status] = await exportStatus(s.db.sql, s.org)
  t.equal(status.rowsSetAside, '0', 'nothing set aside')
})

t.test('the customer mapping is removed between a lost answer and its retry', async (t) => {
  if (await withoutServer(t, 'an exporter and its lease renewals on connections of their own')) return
  const s = await setup(t, 'mai_client_s11_unmap', 0, '2 hours', '1 hour')
  await onFirstFailure(s.db, `DELETE FROM billing_customers WHERE organization_id = '${s.org}'`)
  const lost = loseFirstAnswer(s)
  await exportWith(t, s)
  t.equal(lost.size, 1, 'the first send was kept by Stripe and its answer lost')
  t.ok(s.stripe.events.has(s.first), 'Stripe holds the row')
  const [status] = await exportStatus(s.db.sql, s.org)
  t.equal(status.rowsSetAside, '0', 'a row Stripe holds is not set aside as undeliverable')
  const b = await books(s)
  t.same(b.totals, b.stripe, 'export_stripe_totals says what Stripe holds')
})

t.test('the row passes the sink\'s age limit between a lost answer and its retry', async (t) => {
  if (await withoutServer(t, 'an exporter and its lease renewals on connections of their own')) return
  // The sink's limit is 3 h less its 1 h margin: the first row (created 1 h ago) is young
  // enough for its first send; its retry, 90 minutes later by the sink's clock, finds it too old.
  const s = await setup(t, 'mai_client_s11_age', 2, '1 hour', '10 minutes')
  let offset = 0
  const lost = loseFirstAnswer(s, () => { offset = 90 * 60_000 })
  await exportWith(t, s, { maxAgeMs: 3 * 3600_000, now: () => Date.now() + offset })
  t.equal(lost.size, 1, 'the first send was kept by Stripe and its answer lost')
  t.same(new Set(s.stripe.events.keys()), new Set([s.first, ...s.others]), 'Stripe holds every row')
  const [status] = await exportStatus(s.db.sql, s.org)
  t.equal(status.rowsSetAside, '0', 'a row Stripe holds is not set aside as too old')
  const b = await books(s)
  t.same(b.totals, b.stripe, 'export_stripe_totals says what Stripe holds')
})
