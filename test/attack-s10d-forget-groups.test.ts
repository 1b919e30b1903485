import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, type Started } from './support/sidecar.js'

// Forgetting a user reaches the group rollups too: after DELETE /admin/v1/users/{id}, no group
// rollup (daily, monthly, unfolded deltas) still names the user or their external id, and a
// group's report by user shows the pseudonym with the same sums, to the digit, before and after.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const ADMIN = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
const HEADER = 'x-openwebui-user-groups'
const USER = 'u-leaver'

let fake: FakeOpenRouter
let db: TestDb
let s: Started
let rows = 0

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, LOG_LEVEL: 'warn' }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function chat (user: string, groups: string): Promise<void> {
  const res = await request(`${s.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user, [HEADER]: groups },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], stream: false }),
  })
  await res.body.text()
  if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`)
  rows++
}

async function admin (method: string, path: string): Promise<{ status: number, body: any }> {
  const res = await request(s.url + path, { method: method as 'GET', headers: ADMIN })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

const RANGE = 'from=2000-01-01&to=2100-01-01'

/** A group's per-user sums, the user's id left out (it is what changes). */
async function byUser (group: string): Promise<unknown[]> {
  const r = await admin('GET', `/admin/v1/usage?group_by=user&group=${group}&${RANGE}`)
  return r.body.data.map(({ user: _u, user_name: _n, user_email: _e, budget: _b, ...sums }: any) => sums).sort((a: any, b: any) => a.requests - b.requests)
}

t.test('forget rewrites the group rollups, folded and not, with sums kept', async (t) => {
  await chat(USER, 'physics,staff')
  await chat(USER, 'physics')
  await chat('u-stays', 'physics')
  t.equal(await settle(s.sidecar, db.sql, rows), rows)
  await db.sql`select usage_rollup_compact()`
  await chat(USER, 'physics')  // left in the deltas, not folded
  t.equal(await settle(s.sidecar, db.sql, rows), rows)
  const [ext] = await db.sql<Array<{ e: string }>>`select external_user_id as e from user_mappings where user_id = ${USER}`
  const before = { physics: await byUser('physics'), staff: await byUser('staff') }

  const del = await admin('DELETE', `/admin/v1/users/${USER}`)
  t.equal(del.status, 200)

  for (const table of ['usage_group_daily_rollups', 'usage_group_monthly_rollups', 'usage_group_rollup_deltas']) {
    const left = await db.sql.unsafe(`select count(*)::int as n from ${table} where user_id = $1 or external_user_id = $2`, [USER, ext.e])
    t.equal(left[0].n, 0, `${table} no longer names the forgotten user`)
  }
  const physics = await admin('GET', `/admin/v1/usage?group_by=user&group=physics&${RANGE}`)
  t.notOk(JSON.stringify(physics.body).includes(USER), 'the group report by user does not name her')
  t.same({ physics: await byUser('physics'), staff: await byUser('staff') }, before, 'the group sums are the same')
  await db.sql`select usage_rollup_compact()`
  t.same({ physics: await byUser('physics'), staff: await byUser('staff') }, before, 'and the same after compaction')
})

t.test('forgetting a user whose id is also a group name leaves the group\'s audit lines alone', async (t) => {
  const res = await request(`${s.url}/admin/v1/budgets/groups/staff`, { method: 'PUT', headers: ADMIN, body: JSON.stringify({ limit_usd: '50', period: 'month' }) })
  await res.body.text()
  t.equal(res.statusCode, 200)
  const key = await request(`${s.url}/admin/v1/keys`, { method: 'POST', headers: ADMIN, body: JSON.stringify({ name: 'staff app', groups: ['staff'] }) })
  await key.body.text()
  t.equal(key.statusCode, 201)
  await chat('staff', 'staff')  // a user whose id is "staff", in the group "staff"
  t.equal(await settle(s.sidecar, db.sql, rows), rows)
  t.equal((await admin('DELETE', '/admin/v1/users/staff')).status, 200)
  const [b] = await db.sql<Array<{ n: number }>>`select count(*)::int as n from audit_log where target = 'budgets/groups/staff'`
  t.equal(b.n, 1, 'the group budget\'s line still names the group')
  const [k] = await db.sql<Array<{ groups: unknown }>>`select after->'groups' as groups from audit_log where action = 'key.created'`
  t.same(k.groups, ['staff'], 'the key\'s groups in its line still name the group')
})
