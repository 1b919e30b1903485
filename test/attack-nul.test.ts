import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// NUL characters are valid JSON ("\u0000") and valid in a decoded URL path, but Postgres text
// cannot hold them: they must not poison the ledger or turn into a 500.

let fake: FakeOpenRouter
let db: TestDb
let s: Started
const ADMIN = 'admin-key-0123456789abcdef'

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function chat (model: string, user: string) {
  const res = await request(s.url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user },
    body: `{"model":${JSON.stringify(model)},"messages":[{"role":"user","content":"hi"}]}`,
  })
  const text = await res.body.text()
  return { status: res.statusCode, text }
}

async function rowsFor (gen: string) {
  for (let i = 0; i < 400; i++) {
    const rows = await db.sql`select model, user_id from usage_events where generation_id = ${gen}`
    if (rows.length > 0) return rows
    await new Promise((r) => setTimeout(r, 25))
  }
  return []
}

t.test('a NUL in the model or user does not stall billing of later generations', async (t) => {
  const bad = await chat('fake/ok\u0000x', 'u-nul')
  t.not(bad.status, 500, bad.text)
  const good = await chat('fake/ok', 'u-good')
  t.equal(good.status, 200)
  const gen = JSON.parse(good.text).id as string
  const rows = await rowsFor(gen)
  t.equal(rows.length, 1, 'the next generation is still billed')
  if (bad.status === 200) {
    const badRows = await rowsFor(/"id":"(gen-[^"]+)"/.exec(bad.text)![1])
    t.equal(badRows.length, 1, 'the generation with a NUL is billed too')
  }
})

t.test('admin: a NUL in a path or filter is a 400, not a 500', async (t) => {
  const h = { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' }
  const put = await request(s.url + '/admin/v1/budgets/users/a%00b', { method: 'PUT', headers: h, body: '{"limit_usd":"1","period":"month"}' })
  const putText = await put.body.text()
  t.equal(put.statusCode, 400, putText)
  const get = await request(s.url + '/admin/v1/budgets/users/a%00b', { headers: h })
  const getText = await get.body.text()
  t.equal(get.statusCode, 400, getText)
  for (const q of ['usage?user=a%00b', 'events?user=a%00b', 'events?model=a%00b', 'events?outcome=a%00b']) {
    const r = await request(s.url + '/admin/v1/' + q, { headers: h })
    const text = await r.body.text()
    t.equal(r.statusCode, 400, `${q}: ${text}`)
  }
})
