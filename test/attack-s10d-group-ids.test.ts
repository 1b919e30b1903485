import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, type Started } from './support/sidecar.js'

// A group is one id however its name arrives: Unicode's two spellings of `Réseau` (composed NFC,
// decomposed NFD, as macOS and some browsers type it) are one group, and a group id the admin
// plane is given (a budget, an allowlist, the usage filter) is read by the same rule as the
// request's header, so a budget set on `physics` plus a pasted zero-width space or NFD accent
// binds the members of that group instead of a group nobody is in.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const ADMIN = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
const HEADER = 'x-openwebui-user-groups'
const NFC = 'R\u00e9seau'
const NFD = 'Re\u0301seau'

let fake: FakeOpenRouter
let db: TestDb
let s: Started
let rows = 0

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, LOG_LEVEL: 'warn', BUDGET_REFRESH_MS: '100' }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function chat (user: string, groups: string, model = 'fake/ok'): Promise<{ status: number, body: any }> {
  const res = await request(`${s.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user, [HEADER]: groups },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], stream: false }),
  })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

async function admin (method: string, path: string, body?: unknown): Promise<{ status: number, body: any }> {
  const res = await request(s.url + path, { method: method as 'GET', headers: ADMIN, body: body === undefined ? undefined : JSON.stringify(body) })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

t.test('NFC and NFD spellings of one name are one group on the rows', async (t) => {
  for (const g of [encodeURIComponent(NFC), encodeURIComponent(NFD)]) {
    const r = await chat('u-nfc', g)
    t.equal(r.status, 200)
    rows++
  }
  t.equal(await settle(s.sidecar, db.sql, rows), rows)
  const got = await db.sql<Array<{ g: string }>>`select distinct unnest(groups) as g from usage_events where user_id = 'u-nfc'`
  t.same(got.map((r) => r.g), [NFC], 'one group, composed')
  const u = await admin('GET', `/admin/v1/usage?group_by=user&group=${encodeURIComponent(NFD)}&from=2000-01-01&to=2100-01-01`)
  t.equal(u.status, 200)
  t.equal(u.body.data.length, 1, 'the usage filter reads an NFD id as the same group')
  t.equal(u.body.data[0]?.requests, 2)
})

t.test('a budget set on a group id with a zero-width space or spaces binds that group', async (t) => {
  const put = await admin('PUT', `/admin/v1/budgets/groups/${encodeURIComponent(' physics\u200b')}`, { limit_usd: '0', period: 'month' })
  t.equal(put.status, 200)
  t.equal(put.body.group_id, 'physics', 'the id is stored as the header would name it')
  const got = await admin('GET', '/admin/v1/budgets/groups/physics')
  t.equal(got.status, 200)
  // The budget reaches the sidecar's cache within BUDGET_REFRESH_MS; wait on the refusal state.
  let r = await chat('u-phys', 'physics')
  for (let i = 0; i < 100 && r.status !== 402; i++) r = await chat('u-phys', 'physics')
  t.equal(r.status, 402, 'a member of physics is refused by the zero budget')
})

t.test('an allowlist set on the NFD spelling restricts members named in NFC', async (t) => {
  const put = await admin('PUT', `/admin/v1/allowlists/groups/${encodeURIComponent(NFD)}`, { models: ['fake/other'] })
  t.equal(put.status, 200)
  const r = await chat('u-res', encodeURIComponent(NFC))
  t.equal(r.status, 403)
  t.equal(r.body?.error?.code, 'model_not_allowed')
})
