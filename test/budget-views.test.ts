import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// Budgets reach the views: a budget set through the admin API shows in "My usage" and as the
// user's bar in the usage API; a user with no budget (and an organization with none) gets none.

const KEY = 'admin-key-0123456789abcdef'
const ADMIN = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: KEY }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function myUsage (user: string): Promise<string> {
  const res = await request(`${s.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user },
    body: JSON.stringify({ model: 'usage-proxy/my-usage', messages: [{ role: 'user', content: 'how much?' }] }),
  })
  const body = await res.body.json() as { choices: Array<{ message: { content: string } }> }
  return body.choices[0].message.content
}

t.test('a user budget set through the admin API appears in My usage and in the usage API', async (t) => {
  const before = await myUsage('u-budget')
  t.notMatch(before, /\$12\.50/, 'no budget yet')
  const put = await request(`${s.url}/admin/v1/budgets/users/u-budget`, { method: 'PUT', headers: ADMIN, body: JSON.stringify({ limit_usd: '12.50', period: 'month' }) })
  t.equal(put.statusCode, 200)
  await put.body.dump()
  // A request so the user has a row in this month's usage.
  const chat = await request(`${s.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-openwebui-user-id': 'u-budget' },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 }),
  })
  t.equal(chat.statusCode, 200)
  await chat.body.dump()
  t.match(await myUsage('u-budget'), /\$12\.50/, 'the limit is shown')
  let row: { budget: { limit_usd: string, period: string } | null } | undefined
  for (let i = 0; i < 200 && !row; i++) {
    const res = await request(`${s.url}/admin/v1/usage?group_by=user`, { headers: ADMIN })
    const body = await res.body.json() as { data: Array<{ user: string, budget: { limit_usd: string, period: string } | null }> }
    row = body.data.find((r) => r.user === "u-budget")
    if (!row) await new Promise((r) => setTimeout(r, 25))
  }
  t.ok(row, 'the user is listed')
  t.equal(row!.budget?.limit_usd, '12.5')
  t.equal(row!.budget?.period, 'month')
  t.notMatch(await myUsage('u-other'), /\$12\.50/, 'another user has no budget')
})
