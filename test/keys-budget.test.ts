import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// A key's own budget and model list, set when the key is made: the budget is a `budgets` row of
// scope 'key' that the admission checks like every other (402 naming the key), the list an
// allowlist (403 model_not_allowed before anything goes upstream, and GET /v1/models shows only
// what the key may use).

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter(21).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, PROXY_API_KEY: 'proxy-key-for-the-chat-app', BUDGET_REFRESH_MS: '100' }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function makeKey (body: Record<string, unknown>) {
  const res = await request(s.url + '/admin/v1/keys', { method: 'POST', headers: admin, body: JSON.stringify(body) })
  return { status: res.statusCode, body: await res.body.json() as any }
}

async function chat (key: string, model = 'fake/ok') {
  const res = await request(s.url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 }),
  })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

t.test('a key\'s budget: written as scope key, shown on the key, refusing by the key\'s name', async (t) => {
  const roomy = await makeKey({ name: 'roomy', budget: { limit_usd: '100.00', period: 'month' } })
  t.equal(roomy.status, 201)
  t.same(roomy.body.budget, { limit_usd: '100', period: 'month' })
  const [row] = await db.sql`select scope, user_id, limit_usd::text as limit, period from budgets where user_id = ${roomy.body.id}`
  t.same(row, { scope: 'key', user_id: roomy.body.id, limit: '100.00', period: 'month' })
  t.equal((await chat(roomy.body.key)).status, 200)

  const tiny = await makeKey({ name: 'tiny', budget: { limit_usd: '0.000001', period: 'day' } })
  const refused = await chat(tiny.body.key)
  t.equal(refused.status, 402)
  t.match(refused.body, { error: { code: 'budget_exceeded', message: new RegExp(tiny.body.id) } }, 'the 402 names the key')
  const before = fake.requests.length
  t.equal((await chat(tiny.body.key)).status, 402)
  t.equal(fake.requests.length, before, 'nothing went upstream')
  const [trail] = await db.sql`select after from audit_log where target = ${`keys/${tiny.body.id}`}`
  const after = typeof trail.after === 'string' ? JSON.parse(trail.after) : trail.after
  t.same(after.budget, { limit_usd: '0.000001', period: 'day' }, 'the audit line holds the budget')
})

t.test('a key\'s models: 403 model_not_allowed before upstream; /v1/models lists only those', async (t) => {
  const k = await makeKey({ name: 'narrow', models: ['fake/ok'] })
  t.equal((await chat(k.body.key, 'fake/ok')).status, 200)
  const before = fake.requests.length
  const no = await chat(k.body.key, 'fake/slow')
  t.equal(no.status, 403)
  t.match(no.body, { error: { type: 'invalid_request_error', code: 'model_not_allowed' } })
  t.equal(fake.requests.length, before, 'nothing went upstream')
  const res = await request(s.url + '/v1/models', { headers: { authorization: `Bearer ${k.body.key}` } })
  const list = await res.body.json() as { data: Array<{ id: string }> }
  t.same(list.data.map((m) => m.id).filter((id) => id.startsWith('fake/')), ['fake/ok'], 'only the key\'s models')
  const all = await request(s.url + '/v1/models', { headers: { authorization: 'Bearer proxy-key-for-the-chat-app' } })
  t.ok((await all.body.json() as { data: unknown[] }).data.length > 1, 'the chat app still sees every model')
})
