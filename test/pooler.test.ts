import t from 'tap'
import postgres from 'postgres'
import { createTestDb } from './support/db.js'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { baseEnv, startSidecar } from './support/sidecar.js'
import { pgbouncerBinary, startPgbouncer } from './support/pgbouncer.js'
import { poolOptions } from '../src/db/connect.js'
import { start } from '../src/main.js'
import { createLogger } from '../src/lib/log.js'

// The sidecar's pool through PgBouncer, in the small: the same statement from several client
// connections through a pooler in transaction mode that hands each transaction whichever backend
// is free (a named prepared statement would be missing there), statement mode refused at boot,
// and DATABASE_DIRECT_URL carrying the migrations. The fleet itself: test/fleet.test.ts.

const bin = pgbouncerBinary()
const skip = 'missing' in bin ? bin.missing : false

t.test('the same statements from 4 connections through 2 backends in transaction mode: every one answers', { skip }, async (t) => {
  const db = await createTestDb()
  if (db.embedded) { await db.drop(); t.plan(0, 'PgBouncer needs a real Postgres server'); return }
  const bouncer = await startPgbouncer({ postgresPort: db.port, mode: 'transaction', poolSize: 2 })
  const sql = postgres(bouncer.url(db.name), poolOptions(4))
  t.teardown(async () => { await sql.end({ timeout: 1 }); await bouncer.kill(); await db.drop() })
  const results = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => i % 2 === 0
    ? sql`select ${i}::int as n`
    : sql.begin(async (tx) => { await tx`select pg_advisory_xact_lock(${i})`; return tx`select ${i}::int as n` })))
  const failed = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason?.message))
  t.same([...new Set(failed)], [], 'no statement is missing on the backend a transaction got')
})

t.test('a pooler in statement mode is refused at boot, naming DATABASE_URL; DATABASE_DIRECT_URL carries the migrations', { skip }, async (t) => {
  const db = await createTestDb()
  if (db.embedded) { await db.drop(); t.plan(0, 'PgBouncer needs a real Postgres server'); return }
  const fake = await new FakeOpenRouter(3).start()
  const statement = await startPgbouncer({ postgresPort: db.port, mode: 'statement' })
  const transaction = await startPgbouncer({ postgresPort: db.port, mode: 'transaction' })
  t.teardown(async () => { await statement.kill(); await transaction.kill(); await fake.close(); await db.drop() })
  const refused = await start(baseEnv(fake, statement.url(db.name), { LOG_LEVEL: 'info' }), createLogger('silent'))
  await t.rejects(refused.ready, { variable: 'DATABASE_URL', message: /statement mode/ }, 'refused, naming the setting')
  await refused.stop('test over')
  const s = await startSidecar(baseEnv(fake, transaction.url(db.name), { LOG_LEVEL: 'info', DATABASE_DIRECT_URL: db.url }))
  t.teardown(() => s.sidecar.stop('test over'))
  const ready = s.logs.lines.map((l) => JSON.parse(l)).find((l) => l.msg === 'schema ready')
  t.equal(ready?.database, db.url.replace(/\/\/([^:/@]+):([^@]*)@/, '//$1:***@'), 'migrated over the direct URL')
})

t.test('a query with parameters sent while another runs on its connection, in transaction mode: it answers, with its own parameters', { skip }, async (t) => {
  // One pool connection, so the second query of each round would be pipelined behind the first;
  // a second client keeps the one backend busy, so a Bind that strays lands on its statement.
  const db = await createTestDb()
  if (db.embedded) { await db.drop(); t.plan(0, 'PgBouncer needs a real Postgres server'); return }
  const bouncer = await startPgbouncer({ postgresPort: db.port, mode: 'transaction', poolSize: 1 })
  const mine = postgres(bouncer.url(db.name), poolOptions(1))
  const other = postgres(bouncer.url(db.name), poolOptions(2))
  t.teardown(async () => { await mine.end({ timeout: 1 }); await other.end({ timeout: 1 }); await bouncer.kill(); await db.drop() })
  const wrong: string[] = []
  const expect = (p: Promise<Array<{ v: string }>>, want: string): Promise<void> =>
    p.then((rows) => { if (rows[0]?.v !== want) wrong.push(`${want} answered ${rows[0]?.v}`) }, (e: Error) => { wrong.push(`${want}: ${e.message}`) })
  for (let round = 0; round < 20 && wrong.length === 0; round++) {
    const all = Promise.all([
      ...[0, 1, 2].map((i) => expect(other<Array<{ v: string }>>`select ${`other ${round}.${i}`}::text as v`, `other ${round}.${i}`)),
      mine.unsafe('select pg_sleep(0.01)').then(() => {}, (e: Error) => { wrong.push(`sleep: ${e.message}`) }),
      expect(mine<Array<{ v: string }>>`select ${`mine ${round}`}::text as v`, `mine ${round}`),
    ])
    let timer: NodeJS.Timeout | undefined
    // A wedged connection never answers: 10 s is a stall detector, far above a round's few ms.
    await Promise.race([all, new Promise<void>((resolve) => { timer = setTimeout(() => { wrong.push(`round ${round}: no answer in 10 s`); resolve() }, 10_000) })])
    clearTimeout(timer)
  }
  t.same(wrong, [], 'every query answered with its own parameters')
})
