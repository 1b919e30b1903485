import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, type Started } from './support/sidecar.js'

// Forgetting a user leaves nothing that names them: not the group rollups (usage_group_*), not
// the API keys made for them (api_keys.user_id, GET /admin/v1/keys); group totals are the same to
// the digit before and after; and the audit rewrite touches only what named the user, not an
// unrelated line whose value happens to equal the user id (a user called "month").

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const AUTH = { authorization: `Bearer ${ADMIN_KEY}` }
const FROM = '2026-01-01'
const TO = '2030-01-01'
let fake: FakeOpenRouter
let db: TestDb
let on: Started

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }))
})
t.teardown(async () => {
  await on?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function call (method: string, path: string, body?: unknown) {
  const res = await request(on.url + path, { method: method as 'GET', headers: { ...AUTH, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

async function chat (user: string, groups: string) {
  const res = await request(on.url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user, 'x-openwebui-user-groups': groups },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 }),
  })
  await res.body.text()
  return res.statusCode
}

async function groupTotals () {
  const r = await call('GET', `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=group`)
  if (r.status !== 200) throw new Error(`usage group: ${r.status} ${JSON.stringify(r.body)}`)
  const view = await db.sql`select group_id, members::text, requests::text, cost_usd::text, billed_cost_usd::text from spend_per_group_month order by group_id`
  return { totals: r.body.totals, data: r.body.data.map((d: any) => { const { budget: _b, members: _m, ...rest } = d; return rest }), view }
}

t.test('forget reaches the group rollups and the keys made for the user', async (t) => {
  const GUS = 'u-gus'
  for (let i = 0; i < 3; i++) t.equal(await chat(GUS, 'physics,chemistry'), 200)
  for (let i = 0; i < 2; i++) t.equal(await chat('u-other', 'physics'), 200)
  await settle(on.sidecar, db.sql, 5)
  await db.sql`select usage_rollup_compact()`
  // One more after the compaction: its group delta is still unfolded when forget runs.
  t.equal(await chat(GUS, 'physics'), 200)
  await settle(on.sidecar, db.sql, 6)
  const made = await call('POST', '/admin/v1/keys', { name: 'gus app', user_id: GUS })
  t.equal(made.status, 201)
  t.equal((await call('PUT', `/admin/v1/billing/customers/users/${GUS}`, { stripe_customer_id: 'cus_Gus1' })).status, 200)
  const before = await groupTotals()

  const gone = await call('DELETE', `/admin/v1/users/${GUS}`)
  t.equal(gone.status, 200)
  const p = gone.body.user_id as string

  for (const table of ['usage_group_rollup_deltas', 'usage_group_daily_rollups', 'usage_group_monthly_rollups']) {
    const [{ n }] = await db.sql.unsafe(`select count(*)::int as n from ${table} where user_id = $1`, [GUS])
    t.equal(n, 0, `${table} no longer names the user`)
  }
  const [{ n: keysNaming }] = await db.sql<Array<{ n: number }>>`select count(*)::int as n from api_keys where user_id = ${GUS}`
  t.equal(keysNaming, 0, 'api_keys no longer names the user')
  const [{ n: customers }] = await db.sql<Array<{ n: number }>>`select count(*)::int as n from billing_customers where subject = ${GUS}`
  t.equal(customers, 0, 'billing_customers no longer names the user')
  const [{ n: moved }] = await db.sql<Array<{ n: number }>>`select count(*)::int as n from billing_customers where subject = ${p} and stripe_customer_id = 'cus_Gus1'`
  t.equal(moved, 1, 'the Stripe customer follows the pseudonym')
  const list = await call('GET', '/admin/v1/keys')
  t.notOk(JSON.stringify(list.body).includes(GUS), 'GET /admin/v1/keys does not show the erased id')
  t.equal(list.body.data[0].user_id, p, 'the key now bills the pseudonym')

  const after = await groupTotals()
  t.same(after.totals, before.totals, 'group_by=group totals unchanged')
  t.same(after.data, before.data, 'each group unchanged')
  t.same(after.view, before.view, 'spend_per_group_month unchanged (members too)')
  await db.sql`select usage_rollup_compact()`
  t.same((await groupTotals()).view, before.view, 'and after the next compaction')
  const [{ n: stale }] = await db.sql<Array<{ n: number }>>`
    select count(*)::int as n from usage_group_daily_rollups g
     where not exists (select 1 from usage_events e where e.external_user_id = g.external_user_id)`
  t.equal(stale, 0, 'every group rollup row belongs to an external id the raw rows still use')
})

t.test('forgetting a user named like a value leaves unrelated audit lines alone', async (t) => {
  t.equal((await call('PUT', '/admin/v1/budgets/users/u-budgeted', { limit_usd: '10', period: 'month' })).status, 200)
  const [line] = await db.sql`select target, before, after from audit_log where target = 'budgets/users/u-budgeted'`
  t.equal(await chat('month', 'physics'), 200)
  await settle(on.sidecar, db.sql, 7)
  t.equal((await call('DELETE', '/admin/v1/users/month')).status, 200)
  const [again] = await db.sql`select target, before, after from audit_log where target = 'budgets/users/u-budgeted'`
  t.same(again, line, 'another user\'s budget line is unchanged by forgetting "month"')
})

t.test('a key made for a user bills the pseudonym right after the forget, not the erased id', async (t) => {
  const made = await call('POST', '/admin/v1/keys', { name: 'kay app', user_id: 'u-kay' })
  t.equal(made.status, 201)
  const withKey = async () => {
    const res = await request(on.url + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${made.body.key}` },
      body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 }),
    })
    await res.body.text()
    return res.statusCode
  }
  const [{ n: before }] = await db.sql<Array<{ n: number }>>`select count(*)::int as n from usage_events`
  t.equal(await withKey(), 200)
  await settle(on.sidecar, db.sql, before + 1)
  const gone = await call('DELETE', '/admin/v1/users/u-kay')
  t.equal(gone.status, 200)
  t.equal(await withKey(), 200)
  await settle(on.sidecar, db.sql, before + 2)
  const rows = await db.sql<Array<{ user_id: string }>>`select user_id from usage_events where api_key_id = ${made.body.id} order by created_at`
  t.same(rows.map((r) => r.user_id), [gone.body.user_id, gone.body.user_id], 'both rows under the pseudonym')
  const [{ n: mappings }] = await db.sql<Array<{ n: number }>>`select count(*)::int as n from user_mappings where user_id = 'u-kay'`
  t.equal(mappings, 0, 'no mapping under the erased id')
})

t.test('a user whose own id starts with "forgotten:" can be forgotten too', async (t) => {
  const ID = 'forgotten:me'
  const [{ n: before }] = await db.sql<Array<{ n: number }>>`select count(*)::int as n from usage_events`
  const res = await request(on.url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': ID, 'x-openwebui-user-name': 'Mia', 'x-openwebui-user-email': 'mia@acme.test' },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 }),
  })
  t.equal(res.statusCode, 200)
  await res.body.text()
  await settle(on.sidecar, db.sql, before + 1)
  const gone = await call('DELETE', `/admin/v1/users/${encodeURIComponent(ID)}`)
  t.equal(gone.status, 200, 'forgotten, not 404')
  const [{ n }] = await db.sql<Array<{ n: number }>>`select count(*)::int as n from user_mappings where user_id = ${ID} or user_email = 'mia@acme.test'`
  t.equal(n, 0, 'her mapping, name and email are gone')
  const [{ r }] = await db.sql<Array<{ r: number }>>`select count(*)::int as r from usage_events where user_id = ${ID}`
  t.equal(r, 0, 'her rows are the pseudonym\'s')
  t.equal((await call('DELETE', `/admin/v1/users/${encodeURIComponent(gone.body.user_id)}`)).body.already_forgotten, true, 'the pseudonym itself still answers as already forgotten')
})
