import t from 'tap'
import postgres from 'postgres'
import { connect as tcp, type Socket } from 'node:net'
import { once } from 'node:events'
import { createTestDb, withoutServer } from './support/db.js'
import { poolOptions } from '../src/db/connect.js'
import { bounded } from '../src/db/bounded.js'

// A reserved connection (sql.reserve()) whose backend Postgres ends: release() hands the closed
// connection, no socket, to the pool as open. The pool gives it its next query, which execute()
// refuses (CONNECTION_CLOSED) and says the connection takes more: it goes to `busy`, and from
// there takes every later query the same way. It never connects again: the pool fails every query.
t.test('a reserved connection released after Postgres ended its backend: the pool serves again', async (t) => {
  if (await withoutServer(t, 'pg_terminate_backend')) return
  const db = await createTestDb()
  // The pool's own sockets, to hear their close as it does.
  const closes: Array<Promise<unknown>> = []
  const socket = async (): Promise<Socket> => {
    const s = tcp(db.port, '127.0.0.1')
    closes.push(once(s, 'close'))
    await once(s, 'connect')
    return s
  }
  const pool = postgres(db.url, { ...poolOptions(1), max_pipeline: 0, socket } as postgres.Options<{}>)
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  const reserved = await pool.reserve()
  t.same(await reserved`select ${1}::int as x`, [{ x: 1 }], 'the reserved connection answers')
  t.equal(closes.length, 1, 'one connection, the reserved one')
  await db.sql`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'usage-proxy' and datname = ${db.name}`
  await closes[0] // the close is heard: postgres.js's own handler ran in the same emit
  reserved.release()
  // Asked until answered: the first query may meet the close, a pool that serves again answers
  // the next; unmended, every query fails (CONNECTION_CLOSED), for good.
  const codes: string[] = []
  for (const deadline = Date.now() + 10_000; codes.at(-1) !== 'answered' && Date.now() < deadline;) {
    if (codes.length > 0) await new Promise((r) => setTimeout(r, 20))
    codes.push(await bounded(pool, 3000)`select ${codes.length}::int as x`.then(() => 'answered', (e: { code?: string }) => String(e.code ?? e)))
  }
  t.equal(codes.at(-1), 'answered', `the pool answers again after the release: ${JSON.stringify(codes.slice(0, 8))}${codes.length > 8 ? ` and ${codes.length - 8} more` : ''}`)
})
