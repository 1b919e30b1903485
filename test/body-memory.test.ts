import t from 'tap'
import { Readable } from 'node:stream'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { journalLines, until } from './support/crash-cycle.js'
import { externalUserId } from '../src/identity/external-id.js'
import { BodyMemory } from '../src/proxy/body/body-memory.js'

// Bodies that arrive in several reads are read into memory reused from one request to the next
// (src/proxy/body/body-memory.ts). A buffer holds a user's conversation: it must never come back while
// a write may still read it, and what it held before must never leave with the next body.

t.test('a buffer comes back only when no write may still read it, within the cap, and is best fit', (t) => {
  let pending = false
  const asked: Buffer[] = []
  const m = new BodyMemory(3 * 1024 * 1024, (body) => { asked.push(body); return pending })
  const a = m.take(600_000)
  t.ok(a.length >= 600_000)
  pending = true
  const view = a.subarray(0, 500_000)
  m.give(a, view)
  t.equal(m.bytes, 0, 'the body sent from it is still being written: left to the GC')
  t.equal(asked[0], view, 'asked about the body that was sent')
  t.not(m.take(600_000), a)
  m.give(a, Buffer.from('a copy was sent'))
  t.equal(m.bytes, a.length, 'a copy was sent: the memory itself is read by no write')
  t.equal(asked.length, 1, 'a copy is not asked about')
  t.equal(m.take(590_000), a)
  pending = false
  m.give(a, view)
  t.equal(m.bytes, a.length, 'kept once its write is done')
  t.not(m.take(2_000_000), a, 'too small for a larger body')
  t.not(m.take(100_000), a, 'far too large for a small one: kept for a body its size')
  t.equal(m.take(590_000), a, 'reused')
  t.equal(m.bytes, 0)
  const big = m.take(2_500_000)
  m.give(big, null)
  const more = m.take(1_000_000)
  m.give(more, more)
  t.equal(m.bytes, big.length, 'past the cap: not kept')
  t.end()
})

let fake: FakeOpenRouter
let db: TestDb
let s: Started
t.before(async () => {
  fake = await new FakeOpenRouter(21).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url))
})
t.teardown(async () => {
  await s.sidecar.stop()
  await fake.close()
  await db.drop()
})

t.test('a large body after a larger one, in the same reused memory, is forwarded exactly: nothing of the first leaves with it', async (t) => {
  const bodies = [
    { model: 'fake/ok', messages: [{ role: 'user', content: 'A'.repeat(900_000) }], user: 'x' },
    { model: 'fake/ok', messages: [{ role: 'user', content: 'B'.repeat(700_000) }] },
    { model: 'fake/ok', messages: [{ role: 'user', content: 'C'.repeat(800_000) }], tail: true },
  ]
  for (const [i, body] of bodies.entries()) {
    const who = `memory-user-${i}`
    const res = await request(`${s.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-openwebui-user-id': who },
      body: JSON.stringify(body),
    })
    t.equal(res.statusCode, 200)
    await res.body.text()
    t.ok(fake.requests.length > i, 'forwarded')
    const sent = fake.requests.at(-1)!.body
    // Only `user` changes, in place: the bytes are the client's, with nothing after them.
    t.equal(sent, JSON.stringify({ ...body, user: externalUserId('mai_client_63a4eb6d', who) }), `body ${i} forwarded exactly, with its user`)
  }
})

t.test('a body queued behind a busy upstream connection keeps its memory until its exchange is over', async (t) => {
  // One upstream connection, held by a slow stream: the next request waits in the pool with its
  // body, and a third arriving meanwhile must not be read into that body's memory.
  const one = await startSidecar(baseEnv(fake, db.url, { UPSTREAM_CONNECTIONS: '1' }))
  t.teardown(() => one.sidecar.stop())
  const before = fake.slowEventMs
  fake.slowEventMs = 25
  t.teardown(() => { fake.slowEventMs = before })
  const send = (model: string, fill: string, size: number, stream = false) => {
    const body = { model, stream, messages: [{ role: 'user', content: fill.repeat(size) }] }
    return request(`${one.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-openwebui-user-id': `queued-${fill}` }, body: JSON.stringify(body),
    }).then(async (res) => ({ status: res.statusCode, text: await res.body.text(), body }))
  }
  const seen = fake.requests.length
  const intents = () => journalLines(one.dataDir).filter((l) => l.k === 'i').length
  // The fake holds the slow stream after its headers: it keeps the one connection until released.
  fake.holdAt = 'body'
  t.teardown(() => fake.release())
  const slow = send('fake/slow', 'S', 300_000, true)
  await until('the slow stream holds the one connection', () => fake.held === 1)
  const queued = send('fake/ok', 'Q', 700_000)
  // An intent line is written as a request is handed to the upstream pool.
  await until('the second body read and waiting in the pool', () => intents() === 2)
  const third = send('fake/ok', 'T', 650_000)
  await until('the third read while the second waits', () => intents() === 3)
  t.equal(fake.held, 1, 'both still wait behind the slow stream')
  // Released, the slow stream runs to its end unpaced: the other two still wait for it to end.
  fake.slowEventMs = 0
  fake.release()
  const answers = await Promise.all([slow, queued, third])
  t.same(answers.map((a) => a.status), [200, 200, 200])
  const forwarded = fake.requests.slice(seen).filter((r) => r.method === 'POST' && r.path.endsWith('/chat/completions')).map((r) => JSON.parse(r.body) as { messages: Array<{ content: string }> })
  t.equal(forwarded.length, 3)
  for (const a of answers) {
    const content = a.body.messages[0].content
    t.ok(forwarded.some((f) => f.messages[0].content === content), `the ${content[0]} body went upstream as sent`)
  }
})

t.test('a body in many reads is forwarded exactly, with a declared length (copied as it arrives) and chunked (copied at the end)', async (t) => {
  // 700 KB: memory for it is taken at the second read. 3 MB: only once about 400 KB have come (a
  // declared length is reserved up to 1 MB or 8 times what arrived).
  for (const [declared, tail] of [[true, 300_000], [false, 300_000], [true, 2_600_000]] as const) {
    const body = { model: 'fake/ok', messages: [{ role: 'user', content: 'D'.repeat(200_000) + 'é'.repeat(100_000) + 'E'.repeat(tail) }] }
    const bytes = Buffer.from(JSON.stringify(body))
    // Slices that cut a character in two, sent with pauses so that each arrives as its own read.
    const cuts = [1, 65_536, 200_013, 300_001, 400_000, ...(tail > 1e6 ? [1_000_000, 2_000_000] : []), bytes.length]
    const who = `reads-user-${declared}-${tail}`
    const res = await request(`${s.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-openwebui-user-id': who, ...(declared ? { 'content-length': String(bytes.length) } : {}) },
      body: Readable.from((async function * () {
        let at = 0
        for (const cut of cuts) { yield bytes.subarray(at, cut); at = cut; await new Promise((r) => setTimeout(r, 5)) }
      })()),
    })
    t.equal(res.statusCode, 200, declared ? 'declared length' : 'chunked')
    await res.body.text()
    t.equal(fake.requests.at(-1)!.body, JSON.stringify({ ...body, user: externalUserId('mai_client_63a4eb6d', who) }), `forwarded exactly (${declared ? 'declared length' : 'chunked'})`)
  }
})
