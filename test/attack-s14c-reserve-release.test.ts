import t from 'tap'
import postgres from 'postgres'
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
  const pool = postgres(db.url, { ...poolOptions(1), max_pipeline: 0 } as postgres.Options<{}>)
  t.teardown(async () => { await pool.end({ timeout: 1 }); await db.drop() })
  const reserved = await pool.reserve()
  t.same(await reserved`select ${1}::int as x`, [{ x: 1 }], 'the reserved connection answers')
  await db.sql`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'usage-proxy' and datname = ${db.name}`
  await new Promise((r) => setTimeout(r, 300)) // the close is heard
  reserved.release()
  const codes: string[] = []
  for (let i = 0; i < 5; i++) {
    codes.push(await bounded(pool, 3000)`select ${i}::int as x`.then(() => 'answered', (e: { code?: string }) => String(e.code ?? e)))
    await new Promise((r) => setTimeout(r, 200))
  }
  t.equal(codes[codes.length - 1], 'answered', `the pool answers again after the release: ${JSON.stringify(codes)}`)
})
