import t from 'tap'
import postgres from 'postgres'
import { createTestDb, withoutServer } from './support/db.js'
import { poolOptions } from '../src/db/connect.js'
import { bounded } from '../src/db/bounded.js'

// A transaction whose backend Postgres ends (pg_terminate_backend) while its function is still
// running: sql.begin rejects at the close, but the function goes on (it caught the statement's
// error, as code that tries an optional step does). Meanwhile the pool reconnected the very same
// connection for a query that waited; the function's next statements go to that new session,
// outside any transaction, and commit on their own. Its COMMIT then runs as a no-op.
t.test('a statement of a transaction whose backend was ended never commits outside it', async (t) => {
  if (await withoutServer(t, 'pg_terminate_backend')) return
  const db = await createTestDb()
  await db.sql`create table tagged (txid bigint, intent int, step int)`
  const pool = postgres(db.url, { ...poolOptions(1), max_pipeline: 0 } as postgres.Options<{}>)
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  const sql = bounded(pool, 5000, 'X', 10_000)
  const code = (p: Promise<unknown>): Promise<string> => p.then(() => 'answered', (e: { code?: string }) => String(e.code ?? e))
  let caught = ''
  let reconnected: () => void = () => {}
  const hasReconnected = new Promise<void>((r) => { reconnected = r })
  let next = 'not sent'
  let finished: () => void = () => {}
  const hasFinished = new Promise<void>((r) => { finished = r })
  const tx = sql.begin(async (tx) => {
    try {
      await tx`insert into tagged values (txid_current(), ${1}, ${1})`
      try { await tx`select pg_sleep(${2})` } catch (e) { caught = String((e as { code?: string }).code) }
      // The pool has reconnected the connection and served the waiting query on the new session.
      await hasReconnected
      next = await code(tx`insert into tagged values (txid_current(), ${1}, ${2})`)
    } finally { finished() }
  }).then(() => 'committed', (e: { code?: string }) => String(e.code ?? e))
  for (let i = 0; i < 200; i++) {
    const [{ n }] = await db.sql`select count(*)::int as n from pg_stat_activity where datname = ${db.name} and query like 'select pg_sleep%' and state = 'active'`
    if (n > 0) break
    await new Promise((r) => setTimeout(r, 10))
  }
  // A query of the pool waits for the transaction's connection: it is queued before the backend ends.
  const other = code(sql`select 1 as x`)
  void other.then(reconnected)
  await db.sql`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'usage-proxy' and datname = ${db.name}`
  const outcome = await tx
  t.not(outcome, 'committed', `the transaction did not commit (${outcome}; its statement failed with ${caught})`)
  t.equal(await other, 'answered', 'the waiting query is answered')
  // The function's last statement has had its answer: a row it wrote outside the transaction is there by now.
  await hasFinished
  const rows = await db.sql`select txid::text, intent, step from tagged order by step`
  t.same(rows, [], `no row of the failed transaction exists (its next statement: ${next}): ${JSON.stringify(rows)}`)
})
