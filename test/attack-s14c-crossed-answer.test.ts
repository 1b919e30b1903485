import t from 'tap'
import postgres from 'postgres'
import { createTestDb, withoutServer } from './support/db.js'
import { relayPool } from './support/tcp-relay.js'
import { poolOptions } from '../src/db/connect.js'
import { bounded } from '../src/db/bounded.js'

async function until (what: string, ok: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

// A transaction whose backend Postgres ends while its function still runs (it caught the error).
// The pool reconnects the same connection for a query that waited; while that new session
// starts (its socket there, Postgres slow to answer: held here by the relay), the transaction's
// next statement comes to execute(). Edit 8 refuses it only when there is no socket: here it is
// taken as the connection's query and written ahead of the startup. The answers then go to the
// wrong callers: the pool's query reads what another statement returned, or the connection fails.
t.test('a statement of an ended transaction sent while its connection reconnects: no query reads another\'s answer', async (t) => {
  if (await withoutServer(t, 'pg_terminate_backend')) return
  const db = await createTestDb()
  const { relay, pool } = await relayPool(t, db, { ...poolOptions(1), max_pipeline: 0 } as postgres.Options<{}>)
  const sql = bounded(pool, 4000, 'X', 8000)
  let go: () => void = () => {}
  const gate = new Promise<void>((r) => { go = r })
  let late: Promise<unknown> | undefined
  let lateSettled = false
  const tx = sql.begin(async (tx) => {
    await tx`select 1`
    try { await tx`select pg_sleep(${3})` } catch {}
    await gate
    late = tx`select 'transaction' as who`.then((r) => r, (e: { code?: string }) => String(e.code ?? e)).finally(() => { lateSettled = true })
    await late
  }).then(() => 'committed', (e: { code?: string }) => String(e.code ?? e))
  await until('the transaction\'s pg_sleep running', async () => {
    const [{ n }] = await db.sql`select count(*)::int as n from pg_stat_activity where datname = ${db.name} and query like 'select pg_sleep%' and state = 'active'`
    return n > 0
  })
  // A query of the pool waits for the transaction's connection: it is queued before the backend ends.
  const other = sql`select ${'pool'}::text as who`.then((r) => r, (e: { code?: string }) => String(e.code ?? e))
  relay.pause()
  const before = relay.connections
  await db.sql`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'usage-proxy' and datname = ${db.name}`
  t.not(await tx, 'committed', 'the transaction failed with its backend')
  // The pool reconnects for `other`: the new socket is open and its startup sent, held by the relay.
  const reconnect = before + 1
  await until('the reconnect\'s startup held', () => relay.connections >= reconnect && (relay.heldFromClient.get(reconnect) ?? 0) > 0)
  const startup = relay.heldFromClient.get(reconnect)!
  go()
  // The transaction's statement is refused, or written to the new socket (held behind the startup).
  await until('the transaction\'s statement refused or sent', () => lateSettled || (relay.heldFromClient.get(reconnect) ?? 0) > startup)
  relay.resume()
  const answer = await other
  const lateAnswer = await late
  t.same(answer, [{ who: 'pool' }], `the pool's query reads its own answer: ${JSON.stringify(answer).slice(0, 160)}`)
  t.not(JSON.stringify(lateAnswer), JSON.stringify([{ who: 'transaction' }]), `the ended transaction's statement did not run: ${JSON.stringify(lateAnswer)}`)
  const after = await Promise.all([1, 2, 3].map((i) => bounded(pool, 5000)`select ${i}::int as x`.then((r) => r[0]?.x, (e: { code?: string }) => String(e.code ?? e))))
  t.same(after, [1, 2, 3], 'and the pool answers after')
})
