import t, { type Test } from 'tap'
import { connect } from 'node:net'
import postgres from 'postgres'
import { PGlite } from '@electric-sql/pglite'
import { servePglite } from '../src/db/pglite-server.js'

// The embedded database's one session, taken in turns: no client may keep the others waiting
// forever, whether by a length no message has or by a transaction it never ends.

const db = await PGlite.create()
t.teardown(() => db.close())

async function served (t: Test, holdIdleMs?: number) {
  const server = await servePglite(db, '127.0.0.1', 0, { holdIdleMs })
  const url = `postgres://postgres@127.0.0.1:${server.port}/postgres`
  const pools: postgres.Sql<{}>[] = []
  const pool = () => { const p = postgres(url, { max: 1, prepare: false, onnotice: () => {} }); pools.push(p); return p }
  t.teardown(async () => {
    for (const p of pools) await p.end({ timeout: 0 }).catch(() => {})
    await server.stop()
  })
  return { pool, server }
}

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
    t.same(await pool()`select 1 as x`, [{ x: 1 }], 'the session is free')
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
  t.same(await pool()`select 1 as x`, [{ x: 1 }])
})

t.test('a client that opens a transaction and stalls is cut off and rolled back once others wait', async (t) => {
  const { pool } = await served(t, 100)
  const a = pool()
  const b = pool()
  await a`create table stall (i int)`
  let inserted!: () => void
  const insertedYet = new Promise<void>((r) => { inserted = r })
  const tx = a.begin(async (tx) => {
    await tx`insert into stall values (1)`
    inserted()
    await new Promise(() => {}) // never ends its transaction
  }).catch((err: Error) => err)
  await insertedYet
  t.same(await b`select count(*)::int as n from stall`, [{ n: 0 }], 'the other client is answered; the stalled insert is rolled back')
  t.ok(await tx instanceof Error, 'the stalled client lost its connection')
})

t.test('a client in a transaction that nobody waits behind keeps it, however long', async (t) => {
  const { pool, server } = await served(t, 20)
  const a = pool()
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
