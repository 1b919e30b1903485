import t, { type Test } from 'tap'
import postgres from 'postgres'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, withoutServer, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// Two admin changes to one target at once (two admins, or two replicas): the audit trail must read
// as a chain, each row's `before` the `after` of the row before it, and each change commits with
// its row. A third connection holds the target's row locked while both changes arrive, so both
// have read what they read before either writes; the test waits until Postgres reports both
// blocked, then lets go.

const ADMIN_KEY = 'admin-key-attack-s10-audit'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
let db: TestDb
let a: Started
let holder: postgres.Sql<{}>

t.before(async () => {
  fake = await new FakeOpenRouter(43).start()
  db = await createTestDb({ migrated: true })
  a = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, BUDGET_REFRESH_MS: '100', LOG_LEVEL: 'warn' }))
  holder = postgres(db.url, { max: 1, onnotice: () => {} })
})
t.teardown(async () => {
  await holder?.end({ timeout: 1 })
  await a?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function put (path: string, body: unknown): Promise<number> {
  const res = await request(a.url + path, { method: 'PUT', headers: admin, body: JSON.stringify(body) })
  await res.body.text()
  return res.statusCode
}

/** Resolves once `n` backends other than the holder wait for a lock. */
async function waiting (n: number): Promise<void> {
  for (;;) {
    const [r] = await db.sql`select count(distinct pid)::int as n from pg_locks where not granted`
    if (r.n >= n) return
    await new Promise((r) => setTimeout(r, 5))
  }
}

async function chain (t: Test, target: string): Promise<void> {
  const rows = await db.sql`select before, after from audit_log where target = ${target} order by id`
  t.equal(rows.length, 3, 'one row per change')
  for (let i = 1; i < rows.length; i++) t.same(rows[i].before, rows[i - 1].after, `row ${i + 1}'s before is row ${i}'s after`)
}

t.test('two allowlist PUTs at once: the trail is a chain', async (t) => {
  if (await withoutServer(t, 'two admin requests blocked at once on a held row lock')) return
  t.equal(await put('/admin/v1/allowlists/groups/race', { models: ['fake/m0'] }), 200)
  await holder.begin(async (tx) => {
    await tx`select 1 from model_allowlists where group_id = 'race' for update`
    const p1 = put('/admin/v1/allowlists/groups/race', { models: ['fake/m1'] })
    const p2 = put('/admin/v1/allowlists/groups/race', { models: ['fake/m2'] })
    await waiting(2)
    return [p1, p2]
  }).then(async ([p1, p2]) => { t.same([await p1, await p2], [200, 200]) })
  await chain(t, 'allowlists/groups/race')
})

t.test('two group budget PUTs at once: the trail is a chain', async (t) => {
  if (await withoutServer(t, 'two admin requests blocked at once on a held row lock')) return
  t.equal(await put('/admin/v1/budgets/groups/race', { limit_usd: '1', period: 'month' }), 200)
  await holder.begin(async (tx) => {
    await tx`select 1 from budgets where scope = 'group' and user_id = 'race' for update`
    const p1 = put('/admin/v1/budgets/groups/race', { limit_usd: '2', period: 'month' })
    const p2 = put('/admin/v1/budgets/groups/race', { limit_usd: '3', period: 'day' })
    await waiting(2)
    return [p1, p2]
  }).then(async ([p1, p2]) => { t.same([await p1, await p2], [200, 200]) })
  await chain(t, 'budgets/groups/race')
})
