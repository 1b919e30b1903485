import t from 'tap'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import postgres from 'postgres'
import { request } from 'undici'
import { createTestDb, type TestDb } from './support/db.js'
import { ORG } from './support/seed.js'
import { createAdminPlane } from '../src/admin/index.js'
import { loadConfig } from '../src/config/config.js'
import { createLogger } from '../src/lib/log.js'
import { migrate } from '../src/db/migrate.js'
import { budgetStatus } from '../src/budgets/store.js'
import { budgetsForUsers } from '../src/budgets/status-for.js'
import type { Sql } from '../src/db/connect.js'

// The usage report per user reads every listed user's budget in ONE query, however many users it
// lists (with 3,030 users one query each took 7 s on the primary), and from the read pool it is
// given. Queries are counted with postgres.js's debug hook on real Postgres.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const USERS = 2500
let db: TestDb
let primary: postgres.Sql<{}>
let reads: postgres.Sql<{}>
let server: Server
let base: string
const onPrimary: string[] = []
const onReads: string[] = []

t.before(async () => {
  db = await createTestDb({ migrated: true })
  primary = postgres(db.url, { max: 2, onnotice: () => {}, debug: (_c, q) => { onPrimary.push(q) } })
  reads = postgres(db.url, { max: 2, onnotice: () => {}, debug: (_c, q) => { onReads.push(q) } })
  await migrate(primary as Sql, new URL('../sql', import.meta.url).pathname)
  await primary`insert into organizations (id, name, markup_percent) values (${ORG}, 'Acme GmbH', '12.5')`
  await primary`insert into user_mappings (organization_id, user_id, external_user_id, user_name)
    select ${ORG}, 'u-' || u, ${ORG} || '-u-' || u, 'User ' || u from generate_series(1, ${USERS}) u`
  await primary`
    insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, provider, streamed,
                              status, outcome, usage_source, prompt_tokens, completion_tokens, total_tokens, cost_usd, markup_percent, kind, created_at)
    select gen_random_uuid(), 'gen-' || u, ${ORG}, 'u-' || u, ${ORG} || '-u-' || u, 'chat/completions', 'fake/ok', 'Fake', false,
           200, 'ok', 'inline', 10, 5, 15, 0.000001 * u, '12.5', 'chat', date_trunc('month', now()) + make_interval(secs => u % 3600)
      from generate_series(1, ${USERS}) u`
  // A default budget for everyone, own budgets for a few (one monthly, one daily), one removed.
  await primary`insert into budgets (organization_id, scope, user_id, limit_usd, period, source) values
    (${ORG}, 'default-user', '', 0.5, 'month', 'api'),
    (${ORG}, 'user', 'u-7', 3, 'month', 'api'),
    (${ORG}, 'user', 'u-8', 0.25, 'day', 'api'),
    (${ORG}, 'user', 'u-9', null, 'month', 'api')`
  const config = loadConfig({ OPENROUTER_API_KEY: 'sk-or-v1-test-key-0123456789', OPENROUTER_EXTERNAL_USER: ORG, ORGANIZATION_NAME: 'Acme GmbH', ADMIN_API_KEY: ADMIN_KEY, DATABASE_URL: db.url })
  const admin = createAdminPlane({
    config, log: createLogger('silent'), sql: () => primary as Sql, readSql: () => reads as Sql,
    budgetsFor: budgetsForUsers(() => reads as Sql, ORG, () => true),
  })!
  server = createServer((req, res) => admin(req, res))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
t.teardown(async () => {
  server?.close()
  await primary?.end({ timeout: 1 })
  await reads?.end({ timeout: 1 })
  await db?.drop()
})

interface Row { user: string, budget: { limit_usd: string, used_usd: string, remaining_usd: string, period: string, resets_at: string | null } | null }

t.test(`a report of ${USERS} users reads their budgets in one query, on the read pool`, async (t) => {
  onPrimary.length = 0
  onReads.length = 0
  const r = await request(`${base}/admin/v1/usage?group_by=user`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
  t.equal(r.statusCode, 200)
  const body = await r.body.json() as { data: Row[] }
  t.equal(body.data.length, USERS, 'every user listed')
  const budgetQueries = [...onPrimary, ...onReads].filter((q) => /\bbudget/i.test(q))
  t.equal(budgetQueries.length, 1, `one budget query for ${USERS} users (saw ${budgetQueries.length})`)
  t.equal(onReads.filter((q) => /\bbudget/i.test(q)).length, 1, 'on the read pool')
  t.equal(onPrimary.length, 0, 'nothing on the primary')
  t.ok(onReads.length <= 4, `the whole report is a handful of queries (${onReads.length})`)

  // Each bar equals what budgetStatus() computes for that user alone.
  const byUser = new Map(body.data.map((d) => [d.user, d.budget]))
  for (const id of ['u-1', 'u-7', 'u-8', 'u-9', `u-${USERS}`]) {
    const own = (await budgetStatus(primary as Sql, ORG, new Date(), id)).find((b) => b.applies && b.scope !== 'organization')!
    t.same(byUser.get(id), { limit_usd: own.limit_usd, used_usd: own.spent_usd, remaining_usd: own.remaining_usd, period: own.period, resets_at: own.resets_at }, `${id}: ${own.scope} ${own.period}`)
  }
  t.equal(byUser.get('u-7')!.limit_usd, '3')
  t.equal(byUser.get('u-8')!.period, 'day')
  t.equal(byUser.get('u-9')!.limit_usd, '0.5', 'a removed own budget: the default applies')
})

t.test('without any budget: no user has a bar', async (t) => {
  await primary`update budgets set limit_usd = null`
  const r = await request(`${base}/admin/v1/usage?group_by=user`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
  const body = await r.body.json() as { data: Row[] }
  t.equal(body.data.filter((d) => d.budget !== null).length, 0)
})

t.test('the sidecar reads the report\'s budgets from DATABASE_READ_URL when set', async (t) => {
  const { FakeOpenRouter } = await import('./support/fake-openrouter.js')
  const { baseEnv, startSidecar } = await import('./support/sidecar.js')
  // The "replica" is a database of its own here: budgets that differ from the primary's show
  // which one the report read.
  await primary`update budgets set limit_usd = 0.7 where scope = 'default-user'`
  const fake = await new FakeOpenRouter().start()
  const other = await createTestDb({ migrated: true })
  const s = await startSidecar(baseEnv(fake, other.url, { ADMIN_API_KEY: ADMIN_KEY, DATABASE_READ_URL: db.url, USER_BUDGET_USD: '0.5', OPENROUTER_EXTERNAL_USER: ORG, SHUTDOWN_GRACE_MS: '200' }))
  t.teardown(async () => { await s.sidecar.stop('test end'); await fake.close(); await other.drop() })
  const deadline = Date.now() + 10_000
  while (!s.logs.text.includes('read replica ready for reports') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  const r = await request(`${s.url}/admin/v1/usage?group_by=user`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
  t.equal(r.statusCode, 200)
  const body = await r.body.json() as { data: Row[] }
  t.equal(body.data.length, USERS, 'the rows come from the read URL')
  t.equal(body.data.find((d) => d.user === 'u-1')?.budget?.limit_usd, '0.7', 'and so do the budgets')
})
