import t from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createTestDb, withoutServer, type TestDb } from './support/db.js'
import { FakeCloudEvents } from './support/billing-receivers.js'
import { ORG, seedLedger } from './support/seed.js'
import { LogSink, startSidecar } from './support/sidecar.js'
import { faultEnv, freePort, spawnSidecar } from './support/child.js'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { migrate } from '../src/db/migrate.js'
import { createLogger } from '../src/lib/log.js'
import { startExporter } from '../src/export/exporter.js'
import { cloudEventsSink } from '../src/export/cloudevents-sink.js'
import { exportStatus } from '../src/export/status.js'
import { acquire, LeaseLost } from '../src/export/lease.js'
import { readCursor, recordBatch } from '../src/export/progress.js'
import { sumDecimals } from '../src/lib/decimal.js'

// The export under faults: rows committing out of order, a stale lease holder, two replicas
// racing for the lease, Postgres cutting the exporter's connections, and a sidecar killed with
// SIGKILL in the middle of a batch. In each, every row arrives, the receiver's deduplicated
// counts and sums equal the ledger's to the digit, and nothing is acknowledged twice.

const log = (): ReturnType<typeof createLogger> => createLogger('warn', new LogSink())

async function waitFor (what: string, check: () => Promise<boolean> | boolean, timeoutMs = 60_000, state?: () => Promise<string> | string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${state ? `: ${await state()}` : ''}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

// One database for the file, each test on an organization of its own: the export reads, leases
// and cursors are per organization, and no test here is about a fresh database (a database made
// and dropped costs about 0.4 s of Postgres CPU).
let shared: TestDb
let orgs = 0
t.before(async () => {
  // The template's schema; migrate re-applies the functions, as at any restart (no test here is about migrating).
  shared = await createTestDb({ migrated: true })
  await migrate(shared.sql, 'sql')
})
t.teardown(() => shared?.drop())

async function fresh (): Promise<{ db: TestDb, ce: FakeCloudEvents, url: string, org: string }> {
  const ce = new FakeCloudEvents(undefined)
  const url = await ce.listen()
  return { db: shared, ce, url, org: `${ORG}_${++orgs}` }
}

/** The receiver holds exactly the organization's ledger: same ids, billed sum to the digit, each id accepted once unless `dupesAllowed`. */
async function reconciles (t: any, db: TestDb, org: string, ce: FakeCloudEvents, dupesAllowed = 0): Promise<void> {
  const ledger = await db.sql<{ id: string, billed: string | null }[]>`SELECT coalesce(generation_id, event_id::text) AS id, billed_cost_usd::text AS billed FROM usage_events WHERE organization_id = ${org}`
  t.same(new Set(ce.events.keys()), new Set(ledger.map((r) => `${org}\u0000${r.id}`)), `all ${ledger.length} rows arrived`)
  t.ok(ce.accepted.length - ce.events.size <= dupesAllowed, `resent under the same id at most ${dupesAllowed} times (${ce.accepted.length - ce.events.size})`)
  const sum = (xs: Array<string | null>): string => sumDecimals(xs.filter((x): x is string => x !== null)).replace(/\.?0+$/, '')
  t.equal(sum([...ce.events.values()].map((e) => e.data.billed_cost_usd)), sum(ledger.map((r) => r.billed)), 'billed sums equal to the digit')
}

t.test('a row committing after later ones is not skipped', async (t) => {
  if (await withoutServer(t, 'two transactions open at once')) return
  const { db, ce, url, org } = await fresh()
  t.teardown(() => ce.close())
  await seedLedger(db.sql, { organizationId: org, rows: 10, from: '2026-11-01', days: 2 })
  // A transaction takes its id first and commits last, as a slow replica's batch does.
  const slow = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => slow.end({ timeout: 1 }))
  let commit!: () => void
  const held = new Promise<void>((r) => { commit = r })
  const lateId = randomUUID()
  let inserted!: () => void
  const insertedP = new Promise<void>((r) => { inserted = r })
  const done = slow.begin(async (tx) => {
    await tx`INSERT INTO usage_events (event_id, organization_id, external_user_id, endpoint, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
      VALUES (${lateId}, ${org}, 'x', 'chat/completions', false, 200, 'ok', 'inline', '0.25', '0', '2026-11-01T00:00:00Z')`
    inserted()
    await held
  })
  await insertedP
  await seedLedger(db.sql, { organizationId: org, rows: 20, from: '2026-11-02', days: 1, seed: 9 })
  const exporter = startExporter([cloudEventsSink({ url, source: org, batchSize: 7 })], { sql: db.sql, organizationId: org, log: log(), leaseMs: 2000, pollMs: 20 })
  t.teardown(() => exporter.stop())
  // The horizon is the cluster's oldest writing transaction: other databases' work may hold it
  // back a while, so wait for the first rows, then for the exporter to find nothing more it may send.
  await waitFor('the rows committed before the slow transaction', () => ce.events.size >= 10)
  await exporter.idle()
  t.equal(ce.events.size, 10, 'only rows below the oldest open transaction went out')
  commit()
  await done
  await waitFor('every row', () => ce.events.size === 31)
  t.ok(ce.events.has(`${org}\u0000${lateId}`), 'the late row arrived')
  await reconciles(t, db, org, ce)
})

t.test('a caught-up exporter on a quiet database goes idle and stops writing', async (t) => {
  // Each write takes a transaction id and moves the horizon; an exporter that wrote its cursor down
  // after every empty read would find a new empty stretch behind its own write, forever.
  if (await withoutServer(t, 'an exporter and its lease renewals on connections of their own')) return
  const { db, ce, url, org } = await fresh()
  t.teardown(() => ce.close())
  await seedLedger(db.sql, { organizationId: org, rows: 12, from: '2026-11-01', days: 2 })
  // A write is a transaction: one cursor write updates its row twice (counts, then position).
  await db.sql.unsafe(`CREATE TABLE writes (org text, tbl text, tx bigint);
    CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO writes VALUES (NEW.organization_id, TG_TABLE_NAME, txid_current()); RETURN NULL; END $$;
    CREATE TRIGGER count_cursor AFTER UPDATE ON export_cursors FOR EACH ROW EXECUTE FUNCTION count_write();
    CREATE TRIGGER count_lease AFTER UPDATE ON export_leases FOR EACH ROW EXECUTE FUNCTION count_write();`)
  t.teardown(() => db.sql.unsafe(`DROP TRIGGER count_cursor ON export_cursors; DROP TRIGGER count_lease ON export_leases; DROP FUNCTION count_write(); DROP TABLE writes;`))
  const leaseMs = 600
  const exporter = startExporter([cloudEventsSink({ url, source: org, batchSize: 5 })], { sql: db.sql, organizationId: org, log: log(), leaseMs, pollMs: 25 })
  t.teardown(() => exporter.stop())
  await waitFor('every row', () => ce.events.size === 12)
  await exporter.idle()
  const count = async (tbl: string): Promise<number> => Number((await db.sql<{ n: string }[]>`SELECT count(DISTINCT tx)::text AS n FROM writes WHERE org = ${org} AND tbl = ${tbl}`)[0].n)
  const cursorsBefore = await count('export_cursors')
  const leasesBefore = await count('export_leases')
  const since = Date.now()
  // Six renewals (one every leaseMs / 3) span two lease periods and about fifty polls (an exporter
  // that wrote after each empty read would not sleep between reads at all); on a busy machine
  // they take longer, and the bound below is on the time they took.
  await waitFor('six lease renewals', async () => await count('export_leases') >= leasesBefore + 6)
  const cursorWrites = await count('export_cursors') - cursorsBefore
  const leases = (Date.now() - since) / leaseMs
  t.ok(cursorWrites <= Math.floor(leases) + 1, `the idle exporter wrote its cursor ${cursorWrites} times in ${leases.toFixed(1)} lease periods (at most once a lease)`)
  await exporter.idle()
  t.pass('and stays idle')
  await reconciles(t, db, org, ce)
})

t.test('a holder whose lease passed on cannot move the cursor', async (t) => {
  const { db, ce, org } = await fresh()
  t.teardown(() => ce.close())
  await seedLedger(db.sql, { organizationId: org, rows: 5, from: '2026-11-01', days: 1 })
  const stale = await acquire(db.sql, org, 'cloudevents', 'replica-a', 200)
  t.ok(stale, 'replica a takes the lease')
  await waitFor('the lease to expire', async () => (await db.sql`SELECT 1 FROM export_leases WHERE organization_id = ${org} AND expires_at < now()`).length === 1)
  const taker = await acquire(db.sql, org, 'cloudevents', 'replica-b', 60_000)
  t.ok(taker, 'replica b takes it over')
  t.not(taker!.token, stale!.token, 'with a new token')
  t.equal(await acquire(db.sql, org, 'cloudevents', 'replica-a', 60_000), null, 'a cannot take it back while b holds it')
  const before = await readCursor(db.sql, org, 'cloudevents')
  const sink = cloudEventsSink({ url: 'http://127.0.0.1:9/', source: org, batchSize: 10 })
  const end = { xid: '99999999', createdAt: '2026-11-02 00:00:00+00', eventId: '00000000-0000-0000-0000-000000000000' }
  await t.rejects(recordBatch(db.sql, stale!, 1000, sink, { rows: [], end }, []), LeaseLost, 'the stale holder\'s write is refused')
  t.same(await readCursor(db.sql, org, 'cloudevents'), before, 'the cursor did not move')
  const moved = await recordBatch(db.sql, taker!, 1000, sink, { rows: [], end }, [])
  t.equal(moved.cursor.xid, '99999999', 'the holder\'s write goes through')
})

t.test('two replicas racing for the lease: one sends, every row once', async (t) => {
  if (await withoutServer(t, 'two exporters on their own connections')) return
  const { db, ce, url, org } = await fresh()
  t.teardown(() => ce.close())
  await seedLedger(db.sql, { organizationId: org, rows: 1000, from: '2026-11-01', days: 5 })
  const pools = [postgres(db.url, { max: 2, onnotice: () => {} }), postgres(db.url, { max: 2, onnotice: () => {} })]
  t.teardown(() => Promise.all(pools.map((p) => p.end({ timeout: 1 }))))
  // The replica without the lease asks for it every pollMs, each ask a transaction; the holder
  // renews every leaseMs / 3 and at every batch, so only a stall of seconds lets its lease lapse.
  const sink = new LogSink()
  const exporters = pools.map((sql, i) => startExporter([cloudEventsSink({ url, source: org, batchSize: 50 })],
    { sql, organizationId: org, log: createLogger('warn', sink), leaseMs: 3000, pollMs: 50, holder: `replica-${i}` }))
  // Half-way, the holder dies without letting go: its pool is gone, its lease expires.
  await waitFor('some rows out', () => ce.events.size >= 400)
  const holderIndex = exporters.findIndex((e) => e.readings()[0].holding)
  t.ok(holderIndex >= 0, 'one replica holds the lease')
  t.notOk(exporters[1 - holderIndex].readings()[0].holding, 'the other does not')
  await pools[holderIndex].end({ timeout: 0 })
  await waitFor('every row', () => ce.events.size === 1000)
  await exporters[1 - holderIndex].stop()
  void exporters[holderIndex].stop()
  t.ok(exporters[1 - holderIndex].readings()[0].sent > 0, 'the survivor took over')
  // The dead holder's batch in flight is sent again; so is a batch whose cursor write a lapsed
  // lease refused (a stall of seconds on a loaded machine), which the exporter logs.
  const lapses = sink.lines.filter((l) => l.includes('export: lease lost')).length
  t.ok(lapses <= 2, `the lease lapsed under a live holder at most twice (${lapses})`)
  await reconciles(t, db, org, ce, 50 * (1 + lapses))
})

t.test('Postgres cuts the exporter\'s connections: every row, sums exact', async (t) => {
  if (await withoutServer(t, 'pg_terminate_backend on another backend')) return
  const { db, ce, url, org } = await fresh()
  const fake = new FakeOpenRouter()
  await fake.start()
  t.teardown(async () => { await ce.close(); await fake.close() })
  await seedLedger(db.sql, { organizationId: org, rows: 1200, from: '2026-11-01', days: 5 })
  // A sidecar process (its crash guard covers the client library's race on a cut socket).
  const env = faultEnv({ org, name: 'Acme', key: 'sk-or-v1-test-key-0123456789', databaseUrl: db.url, upstream: fake.baseUrl, dataDir: mkdtempSync(join(tmpdir(), 'export-cut-')) },
    { CLOUDEVENTS_URL: url, CLOUDEVENTS_BATCH_SIZE: '40', EXPORT_LEASE_MS: '2000', EXPORT_POLL_MS: '10', EXPORT_RETRY_MAX_MS: '100' })
  const sidecar = spawnSidecar(env, await freePort())
  t.teardown(async () => { sidecar.proc.kill('SIGTERM'); await sidecar.exited })
  await sidecar.waitReady()
  for (const at of [200, 500, 800]) {
    await waitFor(`${at} rows`, () => ce.events.size >= at)
    await db.sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'usage-proxy' AND datname = current_database()`
  }
  // On a time-out: what arrived, what the export's status reads, and the sidecar's log lines about it.
  const state = async (): Promise<string> => JSON.stringify({ received: ce.events.size, status: await exportStatus(db.sql, org),
    horizon: (await db.sql`SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS x, (SELECT count(*) FROM pg_stat_activity WHERE backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)::int AS holding`)[0],
    log: sidecar.logs().filter((l) => l.level >= 40 || /export|lease/.test(String(l.msg))).slice(-15).map((l) => `${l.level} ${l.msg} ${l.err ?? l.reason ?? ''}`) })
  await waitFor('every row', () => ce.events.size === 1200, 60_000, state)
  await waitFor('caught up', async () => (await exportStatus(db.sql, org))[0].pending === 0)
  t.equal(sidecar.proc.exitCode, null, 'the sidecar lived through the cuts')
  // A batch the receiver took is sent again only after a disruption the export logs: a cursor write
  // a cut failed, or a lease that lapsed while the reconnect waited (a busy machine). One batch each.
  const disruptions = sidecar.logs().filter((l) => /export: (batch failed|lease lost|receiver did not take)/.test(String(l.msg))).length
  t.ok(disruptions >= 1 && disruptions <= 12, `the cuts were seen, and only a few times (${disruptions})`)
  await reconciles(t, db, org, ce, disruptions * 40)
})

t.test('SIGKILL in the middle of a batch: the next sidecar resends it under the same ids', async (t) => {
  if (await withoutServer(t, 'a sidecar process on a shared database')) return
  const { db, ce, url, org } = await fresh()
  const fake = new FakeOpenRouter()
  await fake.start()
  t.teardown(async () => { await ce.close(); await fake.close() })
  await seedLedger(db.sql, { organizationId: org, rows: 400, from: '2026-11-01', days: 5 })
  // The third batch is taken by the receiver and its answer never comes: the sidecar dies waiting.
  const stuck = new Promise<void>((r) => { ce.onHeld = r })
  ce.answer = (n) => n === 2 ? { status: 0 } : null
  // A lease long enough that only the SIGKILL ends one: a lapse under a live holder (a stall on a
  // loaded machine) would make it send a batch again on its own.
  const env = faultEnv({ org, name: 'Acme', key: 'sk-or-v1-test-key-0123456789', databaseUrl: db.url, upstream: fake.baseUrl, dataDir: mkdtempSync(join(tmpdir(), 'export-kill-')) },
    { CLOUDEVENTS_URL: url, CLOUDEVENTS_BATCH_SIZE: '100', EXPORT_LEASE_MS: '30000', EXPORT_POLL_MS: '20', EXPORT_RETRY_MAX_MS: '200' })
  const first = spawnSidecar(env, await freePort())
  await first.waitReady()
  await stuck
  first.proc.kill('SIGKILL')
  t.equal((await first.exited).signal, 'SIGKILL', 'the first sidecar died by SIGKILL')
  // The dead holder's lease runs out (a dead holder's lease expiring is the race test's subject):
  // the database's clock is moved past it rather than waited for.
  t.equal((await db.sql`UPDATE export_leases SET expires_at = now() - interval '1 second' WHERE organization_id = ${org} AND expires_at > now() RETURNING 1`).length, 1, 'the dead sidecar held the lease')
  // The next start, in this process: what it shows is the resend, not the process (about a second
  // of CPU less than spawning one).
  const second = await startSidecar({ ...env, PORT: '0', HOST: '127.0.0.1' })
  t.teardown(() => second.sidecar.stop('test over'))
  await waitFor('every row', () => ce.events.size === 400)
  await waitFor('caught up', async () => (await exportStatus(db.sql, org))[0].pending === 0)
  await reconciles(t, db, org, ce, 100)
})
