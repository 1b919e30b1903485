import t, { type Test } from 'tap'
import { connect } from 'node:net'
import postgres from 'postgres'
import { PGlite } from '@electric-sql/pglite'
import { servePglite } from '../src/db/pglite-server.js'
import { blankDataDir, rowsSoon } from './support/db.js'

// The embedded database (the sidecar's trial mode, and the suite's fallback without a server) is
// one PGlite session shared by several clients: each must get it for whole exchanges.

// One PGlite for the file (it takes seconds to start); each test has its own server and table.
// (The tests of the guards against a client that would keep the others waiting, at the end, were
// test/attack-s9-pglite.test.ts, which started a PGlite of its own with a fresh initdb.)
const db = await PGlite.create({ loadDataDir: await blankDataDir() })
t.teardown(() => db.close())

async function served (t: Test, holdIdleMs?: number) {
  const server = await servePglite(db, '127.0.0.1', 0, { holdIdleMs })
  const url = `postgres://postgres@127.0.0.1:${server.port}/postgres`
  const pools: postgres.Sql<{}>[] = []
  const pool = (max = 4, opts: postgres.Options<{}> = {}) => { const p = postgres(url, { max, prepare: false, onnotice: () => {}, ...opts }); pools.push(p); return p }
  t.teardown(async () => {
    for (const p of pools) await p.end({ timeout: 0 }).catch(() => {})
    await server.stop()
  })
  return { pool, server }
}

t.test('many clients pipelining unnamed statements and transactions never see each other\'s portals', async (t) => {
  const { pool } = await served(t)
  const a = pool()
  const b = pool()
  await a`create table t1 (i int)`
  const jobs: Promise<unknown>[] = []
  for (let i = 0; i < 120; i++) {
    const c = i % 2 === 0 ? a : b
    jobs.push(i % 5 === 0
      ? c.begin(async (tx) => { await tx`insert into t1 values (${i})`; return tx`select count(*)::int as n from t1 where i > ${i}` })
      : c`select ${i}::int as x`.then((r) => { if (r[0].x !== i) throw new Error(`asked ${i}, got ${r[0].x}`) }))
  }
  const results = await Promise.allSettled(jobs)
  t.same(results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'every exchange answered, in its own turn')
  t.same(await a`select count(*)::int as n from t1`, [{ n: 24 }])
})

t.test('a transaction keeps the session: another client\'s statement waits for its end and sees it whole', async (t) => {
  const { pool, server } = await served(t)
  const a = pool(1)
  const b = pool(1)
  await a`create table t2 (i int)`
  let release!: () => void
  const held = new Promise<void>((r) => { release = r })
  let inserted!: () => void
  const insertedYet = new Promise<void>((r) => { inserted = r })
  const tx = a.begin(async (tx) => {
    await tx`insert into t2 values (1)`
    inserted()
    await held
    await tx`insert into t2 values (2)`
  })
  await insertedYet
  let seen: number | null = null
  const read = b`select count(*)::int as n from t2`.then((r) => { seen = r[0].n })
  while (server.waiting() === 0) await new Promise((r) => setImmediate(r)) // its bytes reached the server
  t.equal(seen, null, 'not answered inside another client\'s transaction')
  release()
  await tx
  await read
  t.equal(seen, 2, 'it sees the committed transaction whole')
})

/**
 * Opens a transaction on `client`, inserts a row into `table` and never ends it: resolves, once the
 * insert is in, to the transaction's promise (which settles only when the connection is lost).
 */
async function insertAndHang (client: postgres.Sql<{}>, table: string): Promise<{ tx: Promise<unknown> }> {
  let inserted!: () => void
  const insertedYet = new Promise<void>((r) => { inserted = r })
  const tx = client.begin(async (tx) => {
    await tx.unsafe(`insert into ${table} values (1)`)
    inserted()
    await new Promise(() => {}) // never ends its transaction
  })
  await insertedYet
  return { tx }
}

t.test('a client gone mid-transaction is rolled back and frees the session', async (t) => {
  const { pool } = await served(t)
  const a = pool(1)
  const b = pool(1)
  await b`create table t3 (i int)`
  const tx = (await insertAndHang(a, 't3')).tx.catch((e: { code?: string }) => e.code)
  await a.end({ timeout: 0 })
  t.match(await tx, /^CONNECTION_(CLOSED|DESTROYED)$/)
  t.same(await b`select count(*)::int as n from t3`, [{ n: 0 }], 'its insert is gone, and the next client is served')
  await b.begin((tx) => tx`insert into t3 values (3)`)
  t.same(await b`select i from t3`, [{ i: 3 }], 'a new transaction starts cleanly')
})

t.test('a client asking for TLS is told no and carries on in plain text (psql does this by default)', async (t) => {
  const { pool } = await served(t)
  const c = pool(1, { ssl: 'prefer' })
  t.same(await c`select 1 as one`, [{ one: 1 }])
})

t.test('settings are each client\'s own, as with a backend each: startup parameters and SETs neither leak nor get lost', async (t) => {
  const { pool } = await served(t)
  const far = pool(1, { connection: { TimeZone: 'Pacific/Kiritimati' } })
  const plain = pool(1)
  const zone = async (c: postgres.Sql<{}>) => (await c`select current_setting('TimeZone') as z, current_setting('statement_timeout') as s`)[0]
  t.same(await zone(far), { z: 'Pacific/Kiritimati', s: '0' }, 'a startup parameter is in place')
  t.same(await zone(plain), { z: 'UTC', s: '0' }, 'and not in another client\'s session')
  await plain`set statement_timeout = '7s'`
  await plain`select set_config('TimeZone', 'Asia/Tokyo', false)`
  t.same(await zone(far), { z: 'Pacific/Kiritimati', s: '0' }, 'another client\'s SET does not reach it')
  t.same(await zone(plain), { z: 'Asia/Tokyo', s: '7s' }, 'its own SETs survive another client\'s turn')
  await plain`reset all`
  t.same(await zone(far), { z: 'Pacific/Kiritimati', s: '0' })
  t.same(await zone(plain), { z: 'UTC', s: '0' }, 'a RESET is its own too')
})

t.test('a client gone leaves none of its prepared statements in the session', async (t) => {
  const { pool } = await served(t)
  const preparing = pool(1, { prepare: true })
  const other = pool(1)
  const prepared = async () => (await other`select count(*)::int as n from pg_prepared_statements`)[0].n
  await preparing`select ${1}::int as one`
  await preparing`select ${2}::int as two`
  t.ok(await prepared() >= 2, 'its statements live in the one session')
  await preparing.end({ timeout: 1 })
  t.equal((await rowsSoon(async () => (await prepared()) === 0 ? [1] : [])).length, 1, 'and go when it does')
})

// ---- the one session, taken in turns: no client may keep the others waiting forever, whether by
// a length no message has or by a transaction it never ends ---------------------------------------

/** A raw client past its startup (answered up to ReadyForQuery); resolves once it is closed. */
async function rawClient (port: number) {
  const s = connect(port, '127.0.0.1')
  await new Promise((r) => s.once('connect', r))
  const params = Buffer.from('user\0postgres\0database\0postgres\0\0')
  const head = Buffer.alloc(8); head.writeInt32BE(8 + params.length, 0); head.writeInt32BE(196608, 4)
  let seen = Buffer.alloc(0)
  const ready = new Promise<void>((resolve) => s.on('data', (d: Buffer) => { seen = Buffer.concat([seen, d]); if (seen.includes(Buffer.from([0x5a, 0, 0, 0, 5]))) resolve() }))
  const closed = new Promise<void>((resolve) => s.once('close', () => resolve()))
  s.on('error', () => {})
  s.write(Buffer.concat([head, params]))
  await ready
  return { s, closed }
}

for (const declared of [-1, 0, 3]) {
  t.test(`a message claiming length ${declared} closes that client, and the others go on`, async (t) => {
    const { pool, server } = await served(t)
    const raw = await rawClient(server.port)
    const bad = Buffer.alloc(5); bad[0] = 0x51; bad.writeInt32BE(declared, 1)
    raw.s.write(bad)
    await raw.closed
    t.same(await pool(1)`select 1 as x`, [{ x: 1 }], 'the session is free')
  })
}

t.test('a startup message claiming under 8 bytes closes that client', async (t) => {
  const { pool, server } = await served(t)
  const s = connect(server.port, '127.0.0.1')
  s.on('error', () => {})
  const closed = new Promise<void>((resolve) => s.once('close', () => resolve()))
  const bad = Buffer.alloc(8); bad.writeInt32BE(0, 0)
  s.write(bad)
  await closed
  t.same(await pool(1)`select 1 as x`, [{ x: 1 }])
})

t.test('a client that opens a transaction and stalls is cut off and rolled back once others wait', async (t) => {
  const { pool } = await served(t, 100)
  const a = pool(1)
  const b = pool(1)
  await a`create table stall (i int)`
  const tx = (await insertAndHang(a, 'stall')).tx.catch((err: Error) => err)
  t.same(await b`select count(*)::int as n from stall`, [{ n: 0 }], 'the other client is answered; the stalled insert is rolled back')
  t.ok(await tx instanceof Error, 'the stalled client lost its connection')
})

t.test('a client in a transaction that nobody waits behind keeps it, however long', async (t) => {
  const { pool, server } = await served(t, 20)
  const a = pool(1)
  await a`create table keep (i int)`
  const started = Date.now()
  await a.begin(async (tx) => {
    await tx`insert into keep values (1)`
    // several idle periods pass with nobody queued
    while (Date.now() - started < 120) await new Promise((r) => setTimeout(r, 10))
    await tx`insert into keep values (2)`
  })
  t.equal(server.waiting(), 0)
  t.same(await a`select count(*)::int as n from keep`, [{ n: 2 }])
})
