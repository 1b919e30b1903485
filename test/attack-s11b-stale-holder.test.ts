import t from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { createTestDb, withoutServer, type TestDb } from './support/db.js'
import { FakeStripe } from './support/billing-receivers.js'
import { seedLedger } from './support/seed.js'
import { KEY, log, waitFor } from './support/stripe-lost-answer.js'
import { startExporter, type Exporter } from '../src/export/exporter.js'
import { stripeSink } from '../src/export/stripe-sink.js'
import { setCustomer } from '../src/export/billing-customers.js'
import { exportStatus } from '../src/export/status.js'

// Two exporters for one sink: A, whose lease passed to B while A was paused (here: A's write of
// its attempts waits on a lock the test holds; A's lease is long, so A does not notice by
// renewing), and B. Nothing fences the attempt write or the send, only the settle.
//
// 1. A writes its attempt (cus_a) after B looked for one and found none, and A's send reaches
//    Stripe first (B's write waits on the test's second lock until A's batch is over). B's own write conflicts and does nothing, but B still sends to the customer
//    it computed (cus_b, the mapping changed meanwhile): Stripe answers the duplicate, and B
//    books the row under cus_b while Stripe holds it under cus_a.
// 2. A writes its attempt after B sent, was answered and deleted B's attempt: A's send is a
//    duplicate, A's settle fails on the fence, and A's attempt stays in export_stripe_attempts
//    for good (the row is behind the cursor; nothing reads or deletes it again).

interface Setup { db: TestDb, stripe: FakeStripe, url: string, org: string, id: string, gate: postgres.ReservedSql, pool: (name: string) => postgres.Sql<{}> }

async function setup (t: any, org: string): Promise<Setup> {
  const db = await createTestDb({ migrated: true })
  const stripe = new FakeStripe(KEY)
  const url = await stripe.listen()
  const pools: Array<postgres.Sql<{}>> = []
  const pool = (name: string): postgres.Sql<{}> => { const p = postgres(db.url, { max: 4, onnotice: () => {}, connection: { application_name: name } }); pools.push(p); return p }
  await seedLedger(db.sql, { organizationId: org, rows: 0, from: '2026-01-01', days: 1 })
  const id = randomUUID()
  await db.sql`INSERT INTO usage_events (event_id, generation_id, organization_id, external_user_id, endpoint, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
    VALUES (${id}, ${'gen-s11b-' + id}, ${org}, 'x', 'chat/completions', false, 200, 'ok', 'inline', '0.0000006', '0', now() - interval '1 hour')`
  await setCustomer(db.sql, org, 'organization', '', 'cus_a')
  // A pause in a replica, put where the sink writes its attempts: the exporter on connection
  // s11b_a (s11b_b) waits there while the test holds advisory lock 42 (43).
  await db.sql.unsafe(`CREATE FUNCTION s11b_gate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF current_setting('application_name') = 's11b_a' THEN PERFORM pg_advisory_xact_lock_shared(42); END IF;
      IF current_setting('application_name') = 's11b_b' THEN PERFORM pg_advisory_xact_lock_shared(43); END IF;
      RETURN NULL;
    END $$;
    CREATE TRIGGER s11b_gate BEFORE INSERT ON export_stripe_attempts FOR EACH STATEMENT EXECUTE FUNCTION s11b_gate();`)
  const gate = await db.sql.reserve()
  // The gate's locks go with the test, whatever happened: an exporter left waiting on one would keep
  // its stop() (and the file) waiting.
  t.teardown(async () => { await gate`SELECT pg_advisory_unlock_all()`.catch(() => {}); gate.release(); for (const p of pools) await p.end({ timeout: 1 }); await stripe.close(); await db.drop() })
  return { db, stripe, url, org, id: 'gen-s11b-' + id, gate, pool }
}

function exporter (t: any, s: Setup, sql: postgres.Sql<{}>, holder: string, leaseMs: number): Exporter {
  const sink = stripeSink({ sql: sql as any, organizationId: s.org, secretKey: KEY, apiBase: s.url, eventName: 'llm_usage', value: 'billed_micro_usd' })
  const e = startExporter([sink], { sql: sql as any, organizationId: s.org, log: log(), holder, leaseMs, pollMs: 20, backoff: { baseMs: 10, maxMs: 50 } })
  t.teardown(() => e.stop())
  return e
}

const waiting = (s: Setup, app: string) => async (): Promise<boolean> =>
  (await s.db.sql`SELECT 1 FROM pg_stat_activity WHERE application_name = ${app} AND wait_event_type = 'Lock' AND wait_event = 'advisory'`).length > 0

async function books (s: Setup): Promise<{ stripe: Record<string, string>, totals: Record<string, string> }> {
  const stripe: Record<string, string> = {}
  for (const e of s.stripe.events.values()) stripe[`${e.customer}|${new Date(e.timestamp * 1000).toISOString().slice(0, 7)}`] = e.value
  const totals: Record<string, string> = {}
  for (const r of await s.db.sql<{ k: string, sent: string }[]>`SELECT stripe_customer_id || '|' || to_char(month, 'YYYY-MM') AS k, sent_units::text AS sent
    FROM export_stripe_totals WHERE organization_id = ${s.org}`) totals[r.k] = r.sent
  return { stripe, totals }
}

t.test('a stale holder writes its attempt between the new holder\'s lookup and its send', async (t) => {
  if (await withoutServer(t, 'two exporters on connections of their own')) return
  const s = await setup(t, 'mai_client_s11b_race')
  await s.gate`SELECT pg_advisory_lock(42), pg_advisory_lock(43)`
  const a = exporter(t, s, s.pool('s11b_a'), 'A', 600_000)
  await waitFor('A to reach its attempt write', waiting(s, 's11b_a'))
  // Meanwhile: the mapping changes, A's lease runs out (A is paused and does not renew), B takes it.
  await setCustomer(s.db.sql, s.org, 'organization', '', 'cus_b')
  await s.db.sql`UPDATE export_leases SET expires_at = now() - interval '1 second' WHERE organization_id = ${s.org}`
  const b = exporter(t, s, s.pool('s11b_b'), 'B', 2000)
  await waitFor('B to reach its attempt write', waiting(s, 's11b_b'))
  await s.gate`SELECT pg_advisory_unlock(42)`
  // A's batch ends (its send, if it sends, then its fenced settle failing): A no longer holds.
  await waitFor('A to find its lease gone', async () => !a.readings()[0].holding)
  await s.gate`SELECT pg_advisory_unlock(43)`
  await waitFor('B to catch up', async () => (await exportStatus(s.db.sql, s.org))[0]?.pending === 0)
  // The stale holder first: once B lets go of the lease, A would take it back.
  await a.stop()
  await b.stop()
  t.equal(s.stripe.accepted.length, 1, 'one event at Stripe')
  const bk = await books(s)
  t.same(bk.totals, bk.stripe, 'export_stripe_totals says what Stripe holds, per customer and month')
  t.equal((await s.db.sql`SELECT 1 FROM export_stripe_attempts`).length, 0, 'nothing left in export_stripe_attempts')
})

t.test('a stale holder writes its attempt after the new holder was answered', async (t) => {
  if (await withoutServer(t, 'two exporters on connections of their own')) return
  const s = await setup(t, 'mai_client_s11b_left')
  await s.gate`SELECT pg_advisory_lock(42)`
  const a = exporter(t, s, s.pool('s11b_a'), 'A', 600_000)
  await waitFor('A to reach its attempt write', waiting(s, 's11b_a'))
  await s.db.sql`UPDATE export_leases SET expires_at = now() - interval '1 second' WHERE organization_id = ${s.org}`
  const b = exporter(t, s, s.pool('s11b_b2'), 'B', 2000)
  await waitFor('B to catch up', async () => (await exportStatus(s.db.sql, s.org))[0]?.pending === 0)
  await s.gate`SELECT pg_advisory_unlock(42)`
  // B still holds the lease: A's batch ends (its send, if it sends, then its fenced settle failing).
  await waitFor('A to find its lease gone', async () => !a.readings()[0].holding)
  // The stale holder first: once B lets go of the lease, A would take it back.
  await a.stop()
  await b.stop()
  t.equal(s.stripe.accepted.length, 1, 'one event at Stripe (A\'s resend was a duplicate)')
  const bk = await books(s)
  t.same(bk.totals, bk.stripe, 'export_stripe_totals says what Stripe holds')
  t.same(await s.db.sql`SELECT event_id::text, stripe_customer_id FROM export_stripe_attempts`, [], 'nothing left in export_stripe_attempts once everything is answered')
})
