import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// The admin plane's door: off without ADMIN_API_KEY, the key checked on every route, and never
// reachable from the data plane's /v1.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
let fake: FakeOpenRouter
let db: TestDb
let on: Started
let off: Started

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }))
  off = await startSidecar(baseEnv(fake, db.url))
})
t.teardown(async () => {
  await on?.sidecar.stop('test end')
  await off?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function get (base: string, path: string, headers: Record<string, string> = {}) {
  const res = await request(base + path, { headers })
  return { status: res.statusCode, body: await res.body.json() as { error?: { type: string, code: string }, organization?: string } }
}

t.test('without ADMIN_API_KEY the admin plane does not exist', async (t) => {
  const r = await get(off.url, '/admin/v1/', { authorization: `Bearer ${ADMIN_KEY}` })
  t.equal(r.status, 404)
  t.equal(r.body.error?.type, 'not_found_error')
})

t.test('the admin key is required, and only the admin key', async (t) => {
  t.equal((await get(on.url, '/admin/v1/')).status, 401, 'no key')
  const wrong = await get(on.url, '/admin/v1/', { authorization: 'Bearer nope' })
  t.equal(wrong.status, 401, 'wrong key')
  t.equal(wrong.body.error?.code, 'invalid_admin_key')
  const right = await get(on.url, '/admin/v1/', { authorization: `Bearer ${ADMIN_KEY}` })
  t.equal(right.status, 200)
  t.equal(right.body.organization, 'mai_client_63a4eb6d')
  const cookie = await get(on.url, '/admin/v1/', { cookie: `other=1; usage_proxy_admin=${ADMIN_KEY}` })
  t.equal(cookie.status, 200, 'the page\'s cookie is accepted too')
  const unknown = await get(on.url, '/admin/v1/nothing-here')
  t.equal(unknown.status, 401, 'an unknown path tells a stranger nothing')
  t.equal((await get(on.url, '/admin/v1/nothing-here', { authorization: `Bearer ${ADMIN_KEY}` })).status, 404)
})

t.test('the page answers at /admin with a query string too', async (t) => {
  const res = await request(on.url + '/admin?from=2026-11-01')
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /text\/html/)
  await res.body.dump()
})
