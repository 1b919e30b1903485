import t from 'tap'
import postgres from 'postgres'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createTestDb, withoutServer } from './support/db.js'
import { TcpRelay } from './support/tcp-relay.js'
import { LogSink } from './support/sidecar.js'
import { connect, poolOptions } from '../src/db/connect.js'
import { bounded } from '../src/db/bounded.js'
import { createLogger } from '../src/lib/log.js'
import { MARK as BOOT_MARK, postgresMended } from '../src/db/postgres-mend.js'
// @ts-expect-error: a plain .mjs script, no declarations
import { MARK, mend } from '../scripts/patch-postgres.mjs'

// scripts/patch-postgres.mjs mends postgres.js (porsager/postgres#1208): without it, a connection
// that Postgres closes while a small write waits for its turn keeps that write buffered for good,
// and never connects again. A pool whose connections all took it is blind until the process
// restarts, as the export's two connections are after pg_terminate_backend under load. And a
// backend ended while a new connection fetches its array types leaves a rejection nobody awaits.
// And a connection whose first query is cancelled (its deadline passed) while it opens never
// joins the pool: it stays "connecting", open and idle, and the pool's queries wait for it.

const pkg = join(dirname(fileURLToPath(import.meta.resolve('postgres'))), '..')

t.test('npm ci mended every build of postgres.js\'s connection, once', async (t) => {
  for (const build of ['src', 'cjs/src', 'cf/src']) {
    const text = readFileSync(join(pkg, build, 'connection.js'), 'utf8')
    t.equal(text.split(MARK).length - 1, 4, `${build}/connection.js: the four edits, each once`)
    t.equal(mend(text, build), text, `${build}: mending again changes nothing`)
  }
  t.equal(BOOT_MARK, MARK, 'boot looks for the mark the script writes')
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
  const db = await createTestDb()
  // Postgres slow to accept (a busy machine, the reconnect's backoff): the relay holds the startup.
  const relay = new TcpRelay(db.port)
  await relay.reserve()
  await relay.open()
  const pool = postgres(`${relay.url}/${db.name}`, poolOptions(1))
  t.teardown(async () => { await pool.end({ timeout: 0 }); await relay.cut(); await db.drop() })
  relay.pause()
  await t.rejects(bounded(pool, 200)`select 1`, { code: 'DEADLINE' }, 'the query that opened the connection missed its deadline, and was cancelled')
  relay.resume()
  // Without the mend the connection stays in postgres.js's "connecting" queue for good, and this
  // waits in the pool's queue until its deadline.
  t.same(await bounded(pool, 5000)`select 2 as x`, [{ x: 2 }], 'the connection, once open, serves the next query')
})
