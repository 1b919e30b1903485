import t from 'tap'
import { createHash } from 'node:crypto'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { CLI, ensureBuilt, runNodeAsync } from './support/child.js'
import { ORG, seedLedger } from './support/seed.js'

// The audit trail through the admin API: who (a fingerprint, never the key), what, before and
// after; keyset paging like /admin/v1/events; env-seeded budgets appended once per change, not
// once per boot; the command line's forget recorded as `cli`.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const AUTH = { authorization: `Bearer ${ADMIN_KEY}` }
const FINGERPRINT = createHash('sha256').update(ADMIN_KEY).digest('hex').slice(0, 12)
let fake: FakeOpenRouter
let db: TestDb
/** The sidecar of the tests after the first (which is about booting): one for all of them. */
let shared: Started | undefined

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
})
t.teardown(async () => {
  await shared?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function call (s: Started, method: string, path: string, body?: unknown, headers: Record<string, string> = AUTH) {
  const res = await request(s.url + path, { method: method as 'GET', headers: { ...headers, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

async function boot (extra: Record<string, string> = {}): Promise<Started> {
  return startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, ...extra }))
}

/** A sidecar booted without budgets in its environment, started by the first test that asks. */
async function running (): Promise<Started> {
  shared ??= await boot()
  return shared
}

async function envRows (): Promise<Array<{ action: string, target: string, before: unknown, after: unknown }>> {
  return db.sql`select action, target, before, after from audit_log where actor = 'env' order by id`
}

t.test('env-seeded budgets: one audit line per change, none for a boot that changes nothing', async (t) => {
  let s = await boot({ ORG_BUDGET_USD: '50', ORG_BUDGET_PERIOD: 'month', USER_BUDGET_USD: '5' })
  await s.sidecar.stop('test')
  t.same(await envRows(), [
    { action: 'budget.set', target: 'budgets/organization', before: null, after: { limit_usd: '50', period: 'month' } },
    { action: 'budget.set', target: 'budgets/default-user', before: null, after: { limit_usd: '5', period: 'month' } },
  ])
  s = await boot({ ORG_BUDGET_USD: '50.00', ORG_BUDGET_PERIOD: 'month', USER_BUDGET_USD: '5' })
  await s.sidecar.stop('test')
  t.equal((await envRows()).length, 2, 'the same budgets again: nothing appended')
  s = await boot({ ORG_BUDGET_USD: '75', ORG_BUDGET_PERIOD: 'month' })
  const rows = (await envRows()).slice(2)
  t.same(rows, [
    { action: 'budget.set', target: 'budgets/organization', before: { limit_usd: '50', period: 'month' }, after: { limit_usd: '75', period: 'month' } },
    { action: 'budget.deleted', target: 'budgets/default-user', before: { limit_usd: '5', period: 'month' }, after: null },
  ])
  // A budget the admin API took over is the API's: the environment no longer writes it, nor audits.
  t.equal((await call(s, 'PUT', '/admin/v1/budgets/organization', { limit_usd: '80', period: 'month' })).status, 200)
  await s.sidecar.stop('test')
  s = await boot({ ORG_BUDGET_USD: '90', ORG_BUDGET_PERIOD: 'month' })
  await s.sidecar.stop('test')
  t.equal((await envRows()).length, 4, 'env does not override (nor audit) a budget set through the API')
  const [api] = await db.sql`select actor, action, before, after from audit_log where actor <> 'env' order by id desc limit 1`
  t.same(api, { actor: `admin-key:${FINGERPRINT}`, action: 'budget.set', before: { limit_usd: '75', period: 'month' }, after: { limit_usd: '80', period: 'month' } })
})

t.test('GET /admin/v1/audit: newest first, keyset pages that cover every row once, bad parameters are 400', async (t) => {
  const s = await running()
  for (let i = 0; i < 23; i++) t.equal((await call(s, 'PUT', `/admin/v1/budgets/users/pager-${i}`, { limit_usd: String(i + 1), period: 'day' })).status, 200)
  const total = (await db.sql`select count(*)::int as n from audit_log where organization_id = ${ORG}`)[0].n
  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const r: any = await call(s, 'GET', `/admin/v1/audit?limit=10${cursor ? `&cursor=${cursor}` : ''}`)
    t.equal(r.status, 200)
    t.equal(r.body.object, 'list')
    for (const row of r.body.data) {
      t.same(Object.keys(row).sort(), ['action', 'actor', 'after', 'at', 'before', 'target'])
      seen.push(JSON.stringify(row))
    }
    t.equal(r.body.has_more, r.body.next_cursor !== null)
    cursor = r.body.next_cursor
    pages++
  } while (cursor !== null && pages < 20)
  t.equal(seen.length, total, 'every row once')
  t.equal(new Set(seen).size, total, 'no row twice')
  t.equal(pages, Math.ceil(total / 10))
  const first = JSON.parse(seen[0])
  t.match(first, { action: 'budget.set', target: 'budgets/users/pager-22', actor: `admin-key:${FINGERPRINT}`, after: { limit_usd: '23', period: 'day' } })
  t.match(first.at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/)
  const ats = seen.map((x) => JSON.parse(x).at)
  t.same(ats, [...ats].sort().reverse(), 'newest first')
  // A change appended while paging lands on the first page, not in the middle of the walk.
  const firstPage: any = await call(s, 'GET', '/admin/v1/audit?limit=5')
  await call(s, 'PUT', '/admin/v1/budgets/users/late', { limit_usd: '1', period: 'day' })
  const second: any = await call(s, 'GET', `/admin/v1/audit?limit=5&cursor=${firstPage.body.next_cursor}`)
  t.same(second.body.data.map((x: any) => JSON.stringify(x)), seen.slice(5, 10), 'the cursor is a position, not an offset')

  for (const [q, param] of [['limit=0', 'limit'], ['limit=1001', 'limit'], ['limit=ten', 'limit'], ['cursor=nope', 'cursor'],
    [`cursor=${Buffer.from('audit:99999999999999999999').toString('base64url')}`, 'cursor'], [`cursor=${Buffer.from('2026-01-01T00:00:00.000000Z|x').toString('base64url')}`, 'cursor']]) {
    const r = await call(s, 'GET', `/admin/v1/audit?${q}`)
    t.equal(r.status, 400, q)
    t.equal(r.body.error.code, 'invalid_parameter')
    t.match(r.body.error.message, new RegExp(`^${param}`), `${q}: names ${param}`)
  }
  t.equal((await call(s, 'GET', '/admin/v1/audit', undefined, {})).status, 401, 'the key is required')
})

t.test('actor: a fingerprint of the credential, by kind; the key never appears in the trail', async (t) => {
  const s = await running()
  t.equal((await call(s, 'PUT', '/admin/v1/budgets/users/by-page', { limit_usd: '3', period: 'week' }, { cookie: `usage_proxy_admin=${ADMIN_KEY}` })).status, 200)
  t.equal((await call(s, 'DELETE', '/admin/v1/budgets/users/by-page')).status, 200)
  const r: any = await call(s, 'GET', '/admin/v1/audit?limit=2')
  t.match(r.body.data, [
    { actor: `admin-key:${FINGERPRINT}`, action: 'budget.deleted', target: 'budgets/users/by-page', before: { limit_usd: '3', period: 'week' }, after: null },
    { actor: `session:${FINGERPRINT}`, action: 'budget.set', target: 'budgets/users/by-page', before: null, after: { limit_usd: '3', period: 'week' } },
  ])
  const [{ n }] = await db.sql`select count(*)::int as n from audit_log where actor like ${'%' + ADMIN_KEY + '%'} or before::text like ${'%' + ADMIN_KEY + '%'} or after::text like ${'%' + ADMIN_KEY + '%'}`
  t.equal(n, 0)
  const count = async () => (await db.sql`select count(*)::int as n from audit_log`)[0].n
  const lines = await count()
  t.equal((await call(s, 'DELETE', '/admin/v1/budgets/users/by-page')).status, 404)
  t.equal((await call(s, 'PUT', '/admin/v1/budgets/users/by-page', { limit_usd: '-1', period: 'week' })).status, 400)
  t.equal(await count(), lines, 'a delete that found nothing, or a refused change, appends nothing')
})

t.test('usage-proxy forget --user: the command line forgets as `cli`', async (t) => {
  ensureBuilt()
  const s = await running()
  await seedLedger(db.sql, { rows: 120, from: '2026-10-01', days: 20 })
  const env = { DATABASE_URL: db.url, OPENROUTER_EXTERNAL_USER: ORG }
  const [{ billed }] = await db.sql`select sum(billed_cost_usd)::text as billed from usage_events`
  const one = await runNodeAsync([CLI, 'forget', '--user', 'u-bob'], env)
  t.equal(one.status, 0, one.stderr)
  const pseudonym = /(forgotten:[0-9a-f]{16})/.exec(one.stdout)?.[1]
  t.ok(pseudonym, one.stdout)
  t.notOk(one.stdout.includes('u-bob'), 'the output does not repeat the erased id')
  t.equal((await db.sql`select count(*)::int as n from usage_events where user_id = 'u-bob'`)[0].n, 0)
  t.equal((await db.sql`select sum(billed_cost_usd)::text as b from usage_events`)[0].b, billed, 'the organization total to the digit')
  const [line] = await db.sql`select actor, action, target from audit_log order by id desc limit 1`
  t.same(line, { actor: 'cli', action: 'user.forgotten', target: `users/${pseudonym}` })
  const via = await call(s, 'GET', '/admin/v1/audit?limit=1')
  t.match(via.body.data[0], { actor: 'cli', target: `users/${pseudonym}` }, 'the API shows it')

  const again = await runNodeAsync([CLI, 'forget', '--user', 'u-bob'], env)
  t.equal(again.status, 0)
  t.match(again.stdout, `already forgotten as ${pseudonym}`)
  const unknown = await runNodeAsync([CLI, 'forget', '--user', 'never-seen'], env)
  t.equal(unknown.status, 1)
  t.match(unknown.stderr, /no usage, mapping or budget names this user/)
  const bad = await runNodeAsync([CLI, 'forget'], env)
  t.equal(bad.status, 2)
  t.match(bad.stderr, /--user ID is required/)
  const verify = await runNodeAsync([CLI, 'verify'], env)
  t.equal(verify.status, 0, verify.stdout + verify.stderr)
})
