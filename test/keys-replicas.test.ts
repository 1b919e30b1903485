import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// Two sidecars on one database. A key made on one works on the other at once (looked up by its
// hash on first sight); revoked on one while traffic runs on the other, it stops there within
// the refresh interval, for good: no request sent after the first refusal is served, and every
// request served has its row and no other.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
const REFRESH_MS = 250
let fake: FakeOpenRouter
let db: TestDb
let a: Started
let b: Started

t.before(async () => {
  fake = await new FakeOpenRouter(13).start()
  db = await createTestDb({ migrated: true })
  const env = () => baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, PROXY_API_KEY: 'proxy-key-for-the-chat-app', API_KEYS_REFRESH_MS: String(REFRESH_MS), LOG_LEVEL: 'info' })
  a = await startSidecar(env())
  b = await startSidecar(env())
})
t.teardown(async () => {
  await a?.sidecar.stop('test end')
  await b?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function chat (base: string, key: string): Promise<number> {
  const res = await request(base + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 }),
  })
  await res.body.dump()
  return res.statusCode
}

t.test('revoked on one replica while traffic runs on the other: refused there within the interval, and only served requests billed', async (t) => {
  const made = await request(a.url + '/admin/v1/keys', { method: 'POST', headers: admin, body: JSON.stringify({ name: 'busy-app' }) })
  const k = await made.body.json() as { id: string, key: string }
  t.equal(await chat(b.url, k.key), 200, 'made on A, served on B at once')

  let served = 1
  let refusedAt: number | null = null
  let revokedAt: number | null = null
  let servedAfterRefusal = 0
  const others: number[] = []
  // Four clients on B until each has seen a refusal; each notes whether anything it sent after
  // the first refusal anywhere was served.
  const client = async (): Promise<void> => {
    for (;;) {
      const sentAfterRefusal = refusedAt !== null
      const status = await chat(b.url, k.key)
      if (status === 200) { served++; if (sentAfterRefusal) servedAfterRefusal++; continue }
      if (status === 401) { refusedAt ??= Date.now(); return }
      others.push(status)
      return
    }
  }
  const clients = Array.from({ length: 4 }, client)
  while (served < 40) await new Promise((r) => setTimeout(r, 5))
  const revoked = await request(`${a.url}/admin/v1/keys/${k.id}`, { method: 'DELETE', headers: admin })
  revokedAt = Date.now()
  t.equal(revoked.statusCode, 200)
  await revoked.body.dump()
  await Promise.all(clients)

  t.same(others, [], 'nothing but 200 and 401')
  t.equal(servedAfterRefusal, 0, 'no request sent after the first refusal was served')
  for (let i = 0; i < 5; i++) t.equal(await chat(b.url, k.key), 401, 'and it stays refused')
  t.equal(await chat(a.url, k.key), 401, 'on A too')
  t.comment(`revocation took effect on the other replica after ${refusedAt! - revokedAt} ms (API_KEYS_REFRESH_MS=${REFRESH_MS}); ${served} requests served`)

  // Every request served has its row and no refused one has any.
  const deadline = Date.now() + 10_000
  let rows = 0
  while (Date.now() < deadline) {
    rows = (await db.sql`select count(*)::int as n from usage_events where api_key_id = ${k.id}`)[0].n
    if (rows >= served && (b.sidecar.ledger()?.depth ?? 0) === 0) break
    await new Promise((r) => setTimeout(r, 25))
  }
  t.equal(rows, served, 'one row per request served')
  const [{ n: all }] = await db.sql`select count(*)::int as n from usage_events`
  t.equal(all, served, 'and no row for a refused one')
})

t.test('last_used_at from both replicas lands in one column, never going back', async (t) => {
  const made = await request(a.url + '/admin/v1/keys', { method: 'POST', headers: admin, body: JSON.stringify({ name: 'two-sided' }) })
  const k = await made.body.json() as { id: string, key: string }
  t.equal(await chat(a.url, k.key), 200)
  t.equal(await chat(b.url, k.key), 200)
  const read = async () => (await db.sql`select last_used_at from api_keys where id = ${k.id}`)[0].last_used_at as Date | null
  let first: Date | null = null
  while (first === null) { first = await read(); if (first === null) await new Promise((r) => setTimeout(r, 25)) }
  t.ok(first instanceof Date)
  t.equal(await chat(b.url, k.key), 200)
  let later = first
  while (later.getTime() === first.getTime()) { later = (await read())!; if (later.getTime() === first.getTime()) await new Promise((r) => setTimeout(r, 25)) }
  t.ok(later > first, 'a later use moves it forward')
})
