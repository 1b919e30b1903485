import t, { type Test } from 'tap'
import postgres from 'postgres'
import { readFileSync } from 'node:fs'
import { connect as tcp, type Socket } from 'node:net'
import { once } from 'node:events'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createTestDb, withoutServer } from './support/db.js'
import { relayPool, TcpRelay } from './support/tcp-relay.js'
import { LogSink } from './support/log-sink.js'
import { connect, poolOptions } from '../src/db/connect.js'
import { bounded } from '../src/db/bounded.js'
import { createLogger } from '../src/lib/log.js'
import { MARK as BOOT_MARK, EDITS as BOOT_EDITS, INDEX_EDITS as BOOT_INDEX_EDITS, postgresMended } from '../src/db/postgres-mend.js'
// @ts-expect-error: a plain .mjs script, no declarations
import { EDITS, INDEX_EDITS, MARK, mend } from '../scripts/patch-postgres.mjs'

// scripts/patch-postgres.mjs mends postgres.js (porsager/postgres#1208): without it, a connection
// that Postgres closes while a small write waits for its turn keeps that write buffered for good,
// and never connects again. A pool whose connections all took it is blind until the process
// restarts, as the export's two connections are after pg_terminate_backend under load. And a
// backend ended while a new connection fetches its array types leaves a rejection nobody awaits.
// And a connection whose first query is cancelled (its deadline passed) while it opens never
// joins the pool: it stays "connecting", open and idle, and the pool's queries wait for it.
// And a transaction's statement cancelled while it waits behind another of the transaction is
// taken from the transaction's queue and nothing is sent: the transaction never ends, and its
// connection never returns to the pool. And a BEGIN that fills its connection's pipeline goes out
// without reserving the connection: the pool's next queries run inside that transaction. And a
// connection reset while the pool still hands it queries keeps them across its reconnect, and
// then waits, in "connecting", for the answer to one of them that the new backend never got.
// And a transaction or reserved connection whose backend ended goes on sending on the connection
// the pool has taken back (test/attack-s14c-*.test.ts).

const pkg = join(dirname(fileURLToPath(import.meta.resolve('postgres'))), '..')

t.test('npm ci mended every build of postgres.js\'s connection and pool, once', async (t) => {
  for (const build of ['src', 'cjs/src', 'cf/src']) {
    for (const [name, edits] of [['connection.js', EDITS], ['index.js', INDEX_EDITS]] as const) {
      const text = readFileSync(join(pkg, build, name), 'utf8')
      t.equal(text.split(MARK).length - 1, edits.length, `${build}/${name}: the ${edits.length} edits, each once`)
      t.equal(mend(text, build, edits), text, `${build}/${name}: mending again changes nothing`)
    }
  }
  t.equal(BOOT_MARK, MARK, 'boot looks for the mark the script writes')
  t.equal(BOOT_EDITS, EDITS.length, 'and counts as many as the script has edits')
  t.equal(BOOT_INDEX_EDITS, INDEX_EDITS.length, 'in both files')
  t.ok(postgresMended(), 'and finds it in the postgres.js this process loads')
  t.throws(() => mend('function other() {}', 'x.js'), /is not there once; is postgres another version\?/, 'a text it does not know is refused, loudly')
})

t.test('a pool whose connections Postgres cuts again and again, mid-query, serves again once the cuts stop', async (t) => {
  if (await withoutServer(t, 'pg_terminate_backend on the pool\'s backends')) return
  const db = await createTestDb()
  const pool = await connect({ url: db.url, log: createLogger('silent', new LogSink()), retryMaxMs: 100, max: 2 })
  // As the sidecar queries: every statement with a deadline, so a stuck connection is an error, not a hang.
  const sql = bounded(pool, 1500)
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  let stop = false
  let served = 0
  // Rejections nobody awaited (postgres.js drops some): each would stop the sidecar's process.
  const dropped: unknown[] = []
  const onDropped = (err: unknown): void => { dropped.push(err) }
  process.on('unhandledRejection', onDropped)
  t.teardown(() => { process.off('unhandledRejection', onDropped) })
  const worker = async (): Promise<void> => {
    while (!stop) {
      await sql`select 1`.then(() => { served++ }, () => {})
      await new Promise((r) => setImmediate(r)) // a query that fails at once must not starve the cuts' timers
    }
  }
  const workers = Array.from({ length: 4 }, worker)
  for (let i = 0; i < 100; i++) {
    await new Promise((r) => setTimeout(r, 20 + (i % 4) * 10))
    await db.sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'usage-proxy' AND datname = current_database()`
  }
  stop = true
  await Promise.all(workers)
  t.ok(served > 0, `queries were served between the cuts (${served})`)
  t.same(dropped.map((e) => String(e)), [], 'no rejection was left for nobody to hear')
  // Both connections must answer: eight at once, all of them, within a deadline each. A wedged
  // connection times every one of its queries out, for as long as one waits.
  const deadline = Date.now() + 30_000
  let round: PromiseSettledResult<unknown>[] = []
  do {
    round = await Promise.allSettled(Array.from({ length: 8 }, () => sql`select 1`))
  } while (round.some((r) => r.status === 'rejected') && Date.now() < deadline)
  const reasons = [...new Set(round.flatMap((r) => r.status === 'rejected' ? [String((r.reason as Error)?.message ?? r.reason)] : []))]
  t.same(round.map((r) => r.status), Array(8).fill('fulfilled'), `every query of a round answered: no connection is wedged ${JSON.stringify(reasons)}`)
})

t.test('a query whose deadline passes while its connection still opens: the connection serves the next query', async (t) => {
  // Postgres slow to accept (a busy machine, the reconnect's backoff): the relay holds the startup.
  const { relay, pool } = await relayPool(t, await createTestDb())
  relay.pause()
  await t.rejects(bounded(pool, 200)`select 1`, { code: 'DEADLINE' }, 'the query that opened the connection missed its deadline, and was cancelled')
  relay.resume()
  // Without the mend the connection stays in postgres.js's "connecting" queue for good, and this
  // waits in the pool's queue until its deadline.
  t.same(await bounded(pool, 5000)`select 2 as x`, [{ x: 2 }], 'the connection, once open, serves the next query')
})

// A socket error (ECONNRESET) settles the connection's queries at once, but the socket's 'close'
// comes a turn later: meanwhile the connection is still the pool's, which hands it more queries.
// Without the mend the close settles none of them; they stay queued on the connection across its
// reconnect, and once the new backend has answered its first query the connection takes the
// next of them as in flight: it waits for good for an answer to what it never sent, and never
// leaves "connecting". (Under pg_terminate_backend with a pool of two, both end so: wedged.)
t.test('a connection reset while the pool hands it a query: the query fails at the close, and the connection serves again', async (t) => {
  if (await withoutServer(t, 'a connection reset under a query')) return
  const db = await createTestDb()
  const relay = new TcpRelay(db.port)
  await relay.reserve()
  await relay.open()
  let onError: (() => void) | null = null
  // The pool's own sockets, to hear the reset as it does (postgres.js takes an opened socket).
  const socket = async (): Promise<Socket> => {
    const s = tcp(relay.port, '127.0.0.1')
    await once(s, 'connect')
    s.on('error', () => { const f = onError; onError = null; f?.() })
    return s
  }
  // The pool hands a query to a connection with one in flight only when it pipelines: postgres.js's
  // default, which poolOptions turns off (connect.ts), and the edit keeps safe.
  const pool = postgres(`${relay.url}/${db.name}`, { ...poolOptions(1), max_pipeline: 100, socket } as postgres.Options<{}>)
  t.teardown(async () => { await pool.end({ timeout: 0 }); await relay.cut(); await db.drop() })
  const sql = bounded(pool, 2000)
  const code = (p: Promise<unknown>): Promise<unknown> => p.then(() => 'fulfilled', (e: { code?: string }) => e.code)
  t.same(await sql`select 1 as x`, [{ x: 1 }], 'the pool answers')
  let late: Promise<unknown> | undefined
  onError = () => { late = code(sql`select 2 as x`) }
  const inflight = code(sql`select pg_sleep(1)`)
  // Reset while Postgres runs it: the query is in flight, not still on its way.
  for (const deadline = Date.now() + 5000; ;) {
    const [{ n }] = await db.sql`select count(*)::int as n from pg_stat_activity where datname = ${db.name} and state = 'active' and query like 'select pg_sleep%'`
    if (n > 0) break
    if (Date.now() > deadline) throw new Error('pg_sleep never ran')
    await new Promise((r) => setTimeout(r, 10))
  }
  relay.reset()
  t.equal(await inflight, 'ECONNRESET', 'the query in flight fails with the reset')
  t.ok(late, 'a query came to the pool between the socket\'s error and its close')
  t.equal(await late, 'CONNECTION_CLOSED', 'and the close settles it, rather than its deadline')
  for (let i = 0; i < 3; i++) t.same(await code(sql`select ${i}::int as x`), 'fulfilled', `the connection reconnects and serves query ${i + 1} of 3`)
})

// With prepare: false every statement with a parameter goes out describe-first, and its
// connection takes no other until that is answered: a transaction's next statement waits in the
// transaction's own queue. A deadline passing there rejects it and marks it cancelled; without
// the mend, the connection later takes it from that queue, sends nothing, and waits for an answer
// to nothing: the transaction's ROLLBACK never goes out and the connection never returns.
t.test('a statement whose deadline passes while it waits behind another of its transaction: the transaction still ends and its connection serves the pool', async (t) => {
  if (await withoutServer(t, 'pg_sleep and cancel requests')) return
  const db = await createTestDb()
  const pool = await connect({ url: db.url, log: createLogger('silent', new LogSink()), retryMaxMs: 100, max: 1 })
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  const sql = bounded(pool, 300, 'DATABASE_QUERY_TIMEOUT_MS', 5000)
  // Both statements time out: the first is cancelled on the server, the second while it waits.
  await t.rejects(sql.begin((tx) => [tx`select pg_sleep(${30})`, tx`select 1`]), { code: 'DEADLINE' }, 'the transaction fails with its statements\' deadline')
  // The pool's only connection: without the mend it is the transaction's for good, and this
  // waits in the pool's queue until its deadline.
  t.same(await bounded(pool, 5000)`select 2 as x`.catch(String), [{ x: 2 }], 'the pool answers: the transaction rolled back and gave its connection back')
  const [{ n }] = await db.sql`select count(*)::int as n from pg_stat_activity where datname = ${db.name} and application_name = 'usage-proxy' and state <> 'idle'`
  t.equal(n, 0, 'and no backend of the pool is left inside a transaction')
})

t.test('the same in a savepoint: the savepoint rolls back, its transaction goes on and commits', async (t) => {
  if (await withoutServer(t, 'pg_sleep and cancel requests')) return
  const db = await createTestDb()
  const pool = await connect({ url: db.url, log: createLogger('silent', new LogSink()), retryMaxMs: 100, max: 1 })
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  const sql = bounded(pool, 300, 'DATABASE_QUERY_TIMEOUT_MS', 5000)
  // A savepoint shares its transaction's queue: its ROLLBACK TO, then the transaction's own
  // statements and COMMIT, wait behind the cancelled statement.
  const after = await sql.begin(async (tx) => {
    await t.rejects(tx.savepoint((sp) => [sp`select pg_sleep(${30})`, sp`select 1`]), { code: 'DEADLINE' }, 'the savepoint fails with its statements\' deadline')
    return await tx`select ${3}::int as x`
  }).catch(String)
  t.same(after, [{ x: 3 }], 'the transaction goes on after its savepoint rolled back, and commits')
  t.same(await bounded(pool, 5000)`select 2 as x`.catch(String), [{ x: 2 }], 'and gives its connection back')
})

t.test('the same on a reserved connection (sql.reserve()): a statement cancelled while it waits is skipped, the next ones run', async (t) => {
  if (await withoutServer(t, 'pg_sleep and cancel requests')) return
  const db = await createTestDb()
  const pool = await connect({ url: db.url, log: createLogger('silent', new LogSink()), retryMaxMs: 100, max: 1 })
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  // The same queue, the same skip; cancelled here by postgres.js's own cancel().
  const reserved = await pool.reserve()
  const first = reserved`select pg_sleep(${30})`
  const second = reserved`select 1`
  const settled = Promise.allSettled([first, second])
  await new Promise((r) => setImmediate(r)) // both handed to the connection: the first sent, the second queued
  // A cancel request that reaches the backend before pg_sleep does is ignored (pg_sleep then runs
  // its 30 s): wait until Postgres runs it.
  for (let i = 0; i < 500; i++) {
    const [{ n }] = await db.sql`select count(*)::int as n from pg_stat_activity where datname = ${db.name} and state = 'active' and query like 'select pg_sleep%'`
    if (n > 0) break
    await new Promise((r) => setTimeout(r, 10))
  }
  second.cancel()
  first.cancel()
  t.same((await settled).map((r) => r.status), ['rejected', 'rejected'], 'both statements were cancelled')
  t.same(await bounded(reserved, 5000)`select ${4}::int as x`.catch(String), [{ x: 4 }], 'the reserved connection serves its next statement')
  reserved.release()
  t.same(await bounded(pool, 5000)`select 2 as x`.catch(String), [{ x: 2 }], 'and, released, the pool')
})

// sql.begin() reserves its connection from the hook BEGIN carries, which execute() ran only when
// the connection could still take more queries (porsager/postgres#1189, #1218). BEGIN that fills
// a connection's pipeline (max_pipeline queries in flight: 100 by default, any busy pool; with
// poolOptions' 0, every BEGIN) or meets a full socket buffer goes out unreserved: Postgres opens the transaction, and the connection goes back
// to the pool. With max 1 the transaction's own statements then throw a TypeError nobody hears
// and never end; with more, BEGIN fails UNSAFE_TRANSACTION. Either way the next plain query of
// the pool runs inside that open transaction, reports success, and is undone when the connection
// closes: a ledger row lost without an error.
async function beginAtPipelineEnd (t: Test, max: number): Promise<void> {
  const db = await createTestDb()
  const pool = await connect({ url: db.url, log: createLogger('silent', new LogSink()), retryMaxMs: 100, max })
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  const dropped: unknown[] = []
  const onDropped = (err: unknown): void => { dropped.push(err) }
  process.on('unhandledRejection', onDropped)
  t.teardown(() => { process.off('unhandledRejection', onDropped) })
  await db.sql`create table ledger_probe (v int not null)`
  // Every connection of the pool open and idle.
  await Promise.all(Array.from({ length: max }, () => pool`select pg_sleep(0.05)`))
  // Each connection takes one query in flight and max_pipeline more queued behind it, in turn;
  // BEGIN, next, lands on the first connection as the query that fills its pipeline (with the
  // pool's max_pipeline of 0, the first query any connection takes fills it).
  const pipeline = (pool.options as { max_pipeline?: number }).max_pipeline ?? 100
  const fill = Array.from({ length: max * pipeline }, () => pool`select 1`.execute())
  const tx = pool.begin(async (tx) => {
    await tx`insert into ledger_probe values (2)`
    throw new Error('roll back')
  })
  const outside = pool`insert into ledger_probe values (1)`.execute()
  const settle = <T>(p: Promise<T>): Promise<string> => Promise.race([
    p.then(() => 'fulfilled', (e: Error) => `rejected: ${e.message}`),
    new Promise<string>((resolve) => setTimeout(resolve, 5000, 'still pending after 5 s')),
  ])
  await Promise.all(fill)
  t.equal(await settle(tx), 'rejected: roll back', 'the transaction ran and rolled back')
  t.equal(await settle(outside), 'fulfilled', 'the plain insert reported success')
  // Every connection of the pool takes one more plain insert.
  const more = await Promise.all(Array.from({ length: max }, () => settle(pool`insert into ledger_probe values (3)`.execute())))
  t.same(more, Array(max).fill('fulfilled'), 'so did one more insert on each connection')
  const rows = await db.sql`select v from ledger_probe order by v`
  t.same(rows.map((r) => r.v), [1, ...Array(max).fill(3)], 'every insert that reported success is committed (another connection sees it), and the rolled back one is not')
  const [{ n }] = await db.sql`select count(*)::int as n from pg_stat_activity where datname = ${db.name} and application_name = 'usage-proxy' and state like 'idle in transaction%'`
  t.equal(n, 0, 'no backend of the pool is left inside a transaction')
  t.same(dropped.map((e) => String(e)), [], 'no rejection was left for nobody to hear')
}

t.test('BEGIN that fills its connection\'s pipeline still reserves the connection: a max-1 pool\'s next query runs outside the transaction', async (t) => {
  if (await withoutServer(t, 'a transaction and a query on one connection')) return
  await beginAtPipelineEnd(t, 1)
})

t.test('the same with two connections, both busy: BEGIN is not refused UNSAFE_TRANSACTION and leaves no transaction open on the pool', async (t) => {
  if (await withoutServer(t, 'a transaction and queries on two connections')) return
  await beginAtPipelineEnd(t, 2)
})

// A transaction whose backend Postgres ends (pg_terminate_backend) still sends its ROLLBACK to
// the connection it had, which the close has handed back to the pool. Unmended, with one query in
// flight per connection (poolOptions), that ROLLBACK parks the connection in the pool's `full`
// queue with no socket, for good: a pool of one answers nothing again.
t.test('transactions whose backends Postgres ends again and again: the pool answers once the cuts stop', async (t) => {
  if (await withoutServer(t, 'pg_terminate_backend on the pool\'s backends')) return
  const db = await createTestDb()
  await db.sql`create table acks (id int, v int)`
  await db.sql`create table lease (id int primary key, v int)`
  await db.sql`insert into lease values (1, 0)`
  // One query in flight per connection, as poolOptions sets it on a mended install.
  const pool = postgres(db.url, { ...poolOptions(1), max_pipeline: 0 } as postgres.Options<{}>)
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  const sql = bounded(pool, 2000)
  let running = true
  const failures: Record<string, number> = {}
  const note = (e: { code?: string, message?: string }): void => { const k = e.code ?? String(e.message); failures[k] = (failures[k] ?? 0) + 1 }
  // The export's shape: a transaction per batch, a read between, a lease renewed beside them.
  const worker = (async () => {
    for (let i = 1; running; i++) {
      await sql.begin(async (tx) => {
        await tx`insert into acks values (${i}, ${i})`
        await tx`update lease set v = ${i} where id = 1`
        await tx`delete from acks where id < ${i - 5}`
      }).catch(note)
      await sql.unsafe('select * from acks where id > $1', [i - 3]).catch(note)
    }
  })()
  const renew = setInterval(() => { sql`update lease set v = v + ${1} where id = 1`.catch(note) }, 30)
  for (let cut = 0; cut < 30; cut++) {
    await new Promise((resolve) => setTimeout(resolve, 50 + Math.random() * 150))
    await db.sql`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'usage-proxy' and datname = current_database()`
  }
  running = false
  clearInterval(renew)
  await worker
  const after = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => bounded(pool, 10_000)`select ${i}::int as x`))
  t.same(after.map((r) => r.status === 'fulfilled' ? 'answered' : String((r.reason as { code?: string }).code ?? r.reason)), Array(6).fill('answered'),
    `every query after the cuts is answered (during them: ${JSON.stringify(failures)})`)
})
