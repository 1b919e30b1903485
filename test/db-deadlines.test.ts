import t from 'tap'
import postgres from 'postgres'
import { request } from 'undici'
import { createTestDb, withoutServer } from './support/db.js'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { baseEnv, LogSink, startSidecar } from './support/sidecar.js'
import { relayPool, TcpRelay } from './support/tcp-relay.js'
import { bounded, DeadlineError } from '../src/db/bounded.js'
import { poolOptions, type Sql } from '../src/db/connect.js'
import { createLogger } from '../src/lib/log.js'
import { Ledger } from '../src/usage/ledger/ledger.js'
import { newRecord } from '../src/usage/ledger/record.js'
import { createMetrics } from '../src/ops/metrics.js'
import { startDbReadings } from '../src/ops/db-readings.js'

// Never blind without saying so: every query has a deadline (and is cancelled at it), /metrics
// and /healthz answer while Postgres does not, the ledger's backlog shows and drains by itself,
// and a ledger that cannot commit says so at error level, once a minute.

async function until (cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  // Bounded by the test's own timeout: no sleep has to be long enough.
  while (!await cond()) await new Promise((r) => setTimeout(r, 50))
  void what
}

t.test('bounded: a query past its deadline is rejected and cancelled on the server; a queued one too; a transaction as a whole', async (t) => {
  if (await withoutServer(t, 'a running query cancelled on the server (PGlite has no backend to signal)')) return
  const db = await createTestDb({ migrated: true })
  const pool = postgres(db.url, poolOptions(1)) as unknown as Sql
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  const sql = bounded(pool, 300, 'TEST_DEADLINE')
  const running = sql`select pg_sleep(30), 'deadline-probe' as tag`
  const queued = sql`select 'behind it' as tag`
  const [a, b] = await Promise.allSettled([running, queued])
  t.ok(a.status === 'rejected' && a.reason instanceof DeadlineError, 'the running query gets the deadline error')
  t.match((a as PromiseRejectedResult).reason.message, /within 300 ms \(TEST_DEADLINE\)/, 'naming the setting')
  t.ok(b.status === 'rejected' && b.reason instanceof DeadlineError, 'so does the one waiting for the connection it held')
  // Cancelled, not left running: the pool's one connection answers the next query long before
  // the 30 s sleep would have ended (10 s is that query's own deadline).
  const [{ ok }] = await bounded(pool, 10_000, 'TEST_DEADLINE')<{ ok: number }[]>`select 1 as ok`
  t.equal(ok, 1, 'the pool is usable after the cancel')
  t.same(await db.sql`select 1 from pg_stat_activity where state = 'active' and query like '%deadline-probe%' and query not like '%pg_stat_activity%'`, [], 'nothing of it runs on the server')
  const tx = sql.begin(async (tx) => { await tx`select 1`; await tx`select pg_sleep(30)` })
  await t.rejects(tx, DeadlineError, 'a statement in a transaction has the deadline too')
  const [{ n }] = await sql<{ n: number }[]>`select 2 as n`
  t.equal(n, 2, 'and the connection came back')
  // A fragment nested in a query is never executed on its own: it gets no timer of its own.
  const frag = sql`and true`
  const [{ x }] = await sql<{ x: number }[]>`select 3 as x where true ${frag}`
  t.equal(x, 3)
  // A cursor's deadline is per batch: a slow consumer is not cut off.
  let seen = 0
  for await (const rows of sql`select g from generate_series(1, 6) g`.cursor(2)) {
    seen += rows.length
    await new Promise((r) => setTimeout(r, 200))
  }
  t.equal(seen, 6, 'a cursor read slower than the deadline in total, each batch within it')
})

t.test('a cursor batch that arrives after its deadline (the cancel never reached Postgres) closes the portal: the connection serves the pool', async (t) => {
  if (await withoutServer(t, 'a cancel request that cannot reach the server')) return
  const { relay, pool } = await relayPool(t, await createTestDb())
  const sql = bounded(pool, 200)
  await sql`select 1` // the pool's one connection is open, through the relay
  relay.refuseNew() // the cancel request, a connection of its own, is refused: the batch runs on
  const read = async (): Promise<number> => {
    let n = 0
    for await (const rows of sql`select g, pg_sleep(0.4) from generate_series(1, 3) g`.cursor(1)) n += (rows as unknown[]).length
    return n
  }
  await t.rejects(read(), { code: 'DEADLINE' }, 'the first batch missed its deadline')
  // The batch comes in 0.4 s after it was asked for. Without the close the connection waits for
  // a next() nobody calls, and this query waits in the pool's queue until its own deadline.
  t.same(await bounded(pool, 5000)`select 2 as x`, [{ x: 2 }], 'the connection serves the next query')
})

t.test('bounded: a transaction its caller was told missed its deadline rolls back, though each statement was within its own', async (t) => {
  if (await withoutServer(t, 'a transaction slower than its deadline, on a pool of its own')) return
  const db = await createTestDb()
  await db.sql`create table late_tx (id int primary key)`
  const pool = postgres(db.url, poolOptions(1)) as unknown as Sql
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  // 400 ms a statement, 800 ms the whole: four sleeps of 250 ms pass the second, never the first.
  const sql = bounded(pool, 400, 'TEST_DEADLINE', 800)
  let bodyEnded!: () => void
  const bodyDone = new Promise<void>((r) => { bodyEnded = r })
  // The body ends either way: on a loaded machine one 250 ms sleep can pass its own 400 ms too.
  const tx = sql.begin(async (tx) => {
    try {
      await tx`insert into late_tx (id) values (1)`
      for (let i = 0; i < 4; i++) await tx`select pg_sleep(0.25)`
    } finally { bodyEnded() }
  })
  await t.rejects(tx, DeadlineError, 'the caller is told it missed its deadline')
  await bodyDone
  // The pool's one connection takes this query only once the transaction has ended.
  const [{ n }] = await bounded(pool, 10_000, 'TEST_DEADLINE')<{ n: number }[]>`select count(*)::int as n from late_tx`
  t.equal(n, 0, 'the body ended after the deadline, and nothing of it committed')
  await sql.begin(async (tx) => { await tx`insert into late_tx (id) values (2)` })
  t.same((await db.sql`select id from late_tx`).map((r) => r.id), [2], 'a transaction within its deadline commits')
})

t.test('Postgres stops answering: /healthz, /metrics and the admin ledger answer at once; the backlog shows, then drains without a restart', async (t) => {
  const db = await createTestDb({ migrated: true })
  const fake = await new FakeOpenRouter(5).start()
  fake.generationDelayMs = 0
  const relay = new TcpRelay(db.port)
  await relay.reserve()
  await relay.open()
  const env = baseEnv(fake, `${relay.url}/${db.name}`, {
    LOG_LEVEL: 'info', ADMIN_API_KEY: 'admin-key-0123456789abcdef', DATABASE_QUERY_TIMEOUT_MS: '1500', BUDGET_DB_TIMEOUT_MS: '200',
  })
  const s = await startSidecar(env)
  t.teardown(async () => { await relay.cut(); await s.sidecar.stop('test over'); await fake.close(); await db.drop() })
  const chat = async (i: number) => {
    const res = await request(s.url + '/v1/chat/completions', {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-openwebui-user-id': 'u1' },
      body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: `hi ${i}` }] }),
    })
    await res.body.text()
    return res.statusCode
  }
  t.equal(await chat(0), 200)
  await until(async () => (await db.sql`select 1 from usage_events`).length === 1, 'first row')
  // A hung database: nothing closes, nothing answers, and the query deadline is ten minutes.
  relay.freeze()
  for (let i = 1; i <= 4; i++) t.equal(await chat(i), 200, 'requests are still served')
  const metric = async (name: string): Promise<number> => {
    const res = await request(s.url + '/metrics')
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(await res.body.text())
    return m ? Number(m[1]) : NaN
  }
  t.equal((await request(s.url + '/healthz')).statusCode, 200, '/healthz answers')
  await until(async () => await metric('usage_proxy_ledger_backlog_records') === 4, 'backlog of 4')
  await until(async () => await metric('usage_proxy_ledger_backlog_oldest_seconds') > 0, 'the oldest record ages')
  await until(async () => await metric('usage_proxy_postgres_up') === 0, 'the background probe says Postgres is down')
  t.ok(await metric('usage_proxy_postgres_last_answer_age_seconds') >= 0, 'and when it last answered')
  const ledgerApi = async () => {
    const admin = await request(s.url + '/admin/v1/ledger', { headers: { authorization: 'Bearer admin-key-0123456789abcdef' } })
    t.equal(admin.statusCode, 200, 'the usage page\'s backlog answers from memory')
    return await admin.body.json() as { backlog_records: number, oldest_waiting_seconds: number, last_error: string | null }
  }
  t.equal((await ledgerApi()).backlog_records, 4)
  // The inserts hang on the frozen connection: their deadline ends them, and says which setting.
  await until(async () => /within 1500 ms \(DATABASE_QUERY_TIMEOUT_MS\)/.test((await ledgerApi()).last_error ?? ''), 'the insert hit its deadline')
  // Back: the stuck connections end, new ones work, and the ledger drains by itself.
  await relay.cut()
  await relay.open()
  await until(async () => (await db.sql`select 1 from usage_events`).length === 5, 'all five rows')
  await until(async () => await metric('usage_proxy_ledger_backlog_records') === 0, 'drained')
  t.equal(await metric('usage_proxy_ledger_backlog_oldest_seconds'), 0, 'nothing waits')
  await until(async () => await metric('usage_proxy_postgres_up') === 1, 'up again')
})

t.test('a ledger that cannot commit for a minute logs at error level once a minute, with the reason and the backlog', async (t) => {
  const sink = new LogSink()
  let now = 1_000_000
  // Postgres refuses connections (the relay is closed) until the test opens it again.
  const db = await createTestDb({ migrated: true })
  await db.sql`insert into organizations (id, name) values ('o', 'O')`
  const { relay, pool } = await relayPool(t, db)
  await relay.cut()
  const ledger = new Ledger(pool, null, createLogger('info', sink), { batchSize: 10, flushMs: 1, stalledAfterMs: 60_000, now: () => now })
  t.teardown(() => ledger.close())
  const errors = () => sink.lines.map((l) => JSON.parse(l)).filter((l) => l.level >= 50)
  for (let i = 0; i < 3; i++) ledger.record(newRecord({ organizationId: 'o', userId: 'u', externalUserId: 'o_u', endpoint: 'chat/completions', model: 'm', streamed: false, markupPercent: '0', chatId: null }))
  await until(() => ledger.backlog().lastError !== null, 'a failed insert')
  now += 59_000
  ledger.checkStalled()
  t.equal(errors().length, 0, 'not before a minute')
  t.equal(ledger.backlog().oldestSeconds, 59, 'the oldest record has waited 59 s')
  now += 1_000
  ledger.checkStalled()
  t.equal(errors().length, 1, 'at a minute: one error line')
  t.match(errors()[0], { reason: /ECONNREFUSED/, backlog: 3, oldestWaitingSeconds: 60, stalledSeconds: 60 })
  now += 30_000
  ledger.checkStalled()
  t.equal(errors().length, 1, 'not again within the minute')
  now += 30_000
  ledger.checkStalled()
  t.equal(errors().length, 2, 'again a minute later')
  await relay.open()
  await until(() => ledger.backlog().records === 0, 'drained')
  t.equal((await db.sql`select count(*)::int as n from usage_events`)[0].n, 3, 'the three records are rows')
  t.same(ledger.backlog(), { records: 0, oldestSeconds: 0, stalledSeconds: 0, lastError: null }, 'committed: nothing waits, no error kept')
  // The age is the oldest record still waiting, not of the first one ever accepted.
  await relay.cut()
  ledger.record(newRecord({ organizationId: 'o', userId: 'u', externalUserId: 'o_u', endpoint: 'chat/completions', model: 'm', streamed: false, markupPercent: '0', chatId: null }))
  now += 5_000
  t.equal(ledger.backlog().oldestSeconds, 5, 'a new record after the drain is 5 s old, not as old as the first')
  await until(() => ledger.backlog().lastError !== null, 'the insert failed again')
  await relay.open()
  await until(() => ledger.backlog().records === 0, 'drained again')
  now += 120_000
  ledger.checkStalled()
  t.equal(errors().length, 2, 'nothing to say once it commits')
})

t.test('/metrics answers from what was read before: a background read that never ends does not hold a scrape', async (t) => {
  const never = new Promise<void>(() => {})
  const m = createMetrics(() => null, { db: { latest: () => ({ postgresUp: true, lastAnswerAt: Date.now() - 4000, utilization: null, overruns: null }), refresh: () => never } })
  const { createServer } = await import('node:http')
  const server = createServer(m.handler)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => server.close(() => r())))
  const res = await request(`http://127.0.0.1:${(server.address() as import('node:net').AddressInfo).port}/metrics`)
  const text = await res.body.text()
  t.match(text, /^usage_proxy_postgres_up 1$/m)
  t.match(text, /^usage_proxy_postgres_last_answer_age_seconds (4|5)(\.\d+)?$/m, 'with the age of that answer')
})

t.test('the background reads have their own deadline: a hung database reads as down, promptly', async (t) => {
  const { relay, pool } = await relayPool(t, await createTestDb({ migrated: true }))
  // The pool's connection is made first and the deadline is a second: on a loaded machine a first
  // read that also connects can miss a shorter one, and this test is about the frozen database.
  await pool`select 1`
  const readings = startDbReadings(() => ({ sql: pool, org: 'o' }), { everyMs: 3_600_000, deadlineMs: 1_000 })
  t.teardown(() => readings.stop())
  await readings.refresh()
  t.equal(readings.latest().postgresUp, true, 'up while it answers')
  relay.freeze()
  await readings.refresh()
  t.equal(readings.latest().postgresUp, false, 'down once a read missed its deadline')
  t.equal(readings.latest().utilization, null, 'and nothing stale is kept')
})
