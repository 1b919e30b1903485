import t from 'tap'
import type { IncomingHttpHeaders } from 'node:http'
import { randomUUID } from 'node:crypto'
import { Agent, request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { deleteBudget, setBudget } from '../src/budgets/store.js'
import { Reserver } from '../src/budgets/reserver.js'

// Group and key budgets through the HTTP API and the budget SQL: a group budget binds under 64
// concurrent requests across 3 sidecars sharing one Postgres; a user in two groups is refused by
// the tighter one and told which; a group budget set mid-period starts from the group's spend;
// a key budget (set through the store, as the API keys use it) holds, settles and recounts.
//
// The request's groups come from StartOptions.groupsOf reading `x-test-groups` (comma-separated).

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
const ORG = 'mai_client_63a4eb6d'
const groupsOf = (h: IncomingHttpHeaders): string[] => {
  const v = h['x-test-groups']
  return typeof v === 'string' && v !== '' ? [...new Set(v.split(','))].sort() : []
}

/** a <= b for decimal strings, exactly. */
function le (a: string, b: string): boolean {
  const units = (v: string) => { const [i, f = ''] = v.split('.'); return BigInt(i + f.padEnd(40, '0').slice(0, 40)) }
  return units(a) <= units(b)
}

function chat (base: string, user: string, groups: string[], extra: Record<string, unknown> = {}, dispatcher?: Agent) {
  return request(base + '/v1/chat/completions', {
    dispatcher,
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user, 'x-test-groups': groups.join(',') },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 200, ...extra }),
  })
}

async function call (base: string, method: string, path: string, body?: unknown) {
  const res = await request(base + path, { method: method as 'GET', headers: admin, body: body === undefined ? undefined : JSON.stringify(body) })
  return { status: res.statusCode, body: await res.body.json() as any }
}

async function settled (db: TestDb): Promise<void> {
  await rowsSoon(async () => (await db.sql`select 1 from budget_reservations limit 1`).length === 0 ? [1] : [], 30_000)
}

// Every completed generation costs $0.0004 ($0.00045 billed), just under its estimate; every
// third request costs $0.0007, above the listed price: overruns happen.
const GROUP_LIMIT = '0.004'
const ESTIMATE_FLOOR = '0.00045'
const TOTAL = 192
const CONCURRENCY = 64
const MEMBERS = [['p0', ['physics']], ['p1', ['physics', 'staff']], ['c0', ['chem']], ['p2', ['physics']], ['c1', ['chem', 'staff']], ['x0', []]] as const

t.test('a group budget binds under 64 concurrent requests across 3 sidecars', async (t) => {
  const fake = await new FakeOpenRouter(31).start()
  fake.slowEventMs = 15
  // Request numbers that are multiples of 3 (a physics member's, among others) cost more than listed.
  fake.costOf = (body) => (Number(/request (\d+)/.exec(String(body.messages?.[0]?.content))?.[1]) % 3 === 0 ? '0.0007' : '0.0004')
  const db = await createTestDb({ migrated: true })
  const sidecars: Started[] = []
  t.teardown(async () => {
    for (const s of sidecars) await s.sidecar.stop('test end')
    await fake.close()
    await db.drop()
  })
  const start = async () => sidecars.push(await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, LOG_LEVEL: 'warn', BUDGET_REFRESH_MS: '100', RECONCILE_MAX_WAIT_MS: '15000',
    // The locks are under test: an admission that gave up waiting would be served unchecked
    // (BUDGET_FAIL_MODE=open), which the embedded database's one session can cause under this
    // load. It waits instead, and the end checks that none failed open.
    BUDGET_DB_TIMEOUT_MS: '60000' }), { groupsOf }))
  await start()
  const put = await call(sidecars[0].url, 'PUT', '/admin/v1/budgets/groups/physics', { limit_usd: GROUP_LIMIT, period: 'month' })
  t.equal(put.status, 200)
  t.equal(put.body.group_id, 'physics')
  // Every replica knows a budget exists before the traffic starts: the others boot after it is
  // set (a replica that booted before learns of it only at its next refresh, up to
  // BUDGET_REFRESH_MS later, and would admit the first requests unchecked meanwhile).
  await start()
  await start()
  for (const s of sidecars) await s.sidecar.ready

  const agent = new Agent({ connections: CONCURRENCY })
  t.teardown(() => agent.close())
  const statuses = new Map<number, number>()
  const refusals: string[] = []
  // One request that costs more than its estimate goes first, so the run always has an overrun
  // to bound (under the flood, which requests win admission is the database's order).
  const first = await chat(sidecars[0].url, 'p2', ['physics'], { messages: [{ role: 'user', content: 'request 999' }] }, agent)
  t.equal(first.statusCode, 200, 'a request above its estimate, before the flood')
  await first.body.dump()
  statuses.set(200, 1)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < TOTAL) {
      const i = next++
      const aborted = i % 8 === 0
      const [user, groups] = MEMBERS[i % MEMBERS.length]
      const res = await chat(sidecars[i % 3].url, user, [...groups], { model: aborted ? 'fake/slow' : 'fake/ok', stream: aborted || i % 2 === 0, messages: [{ role: 'user', content: `request ${String(i).padStart(3, '0')}` }] }, agent)
      statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1)
      if (res.statusCode === 402) refusals.push((await res.body.json() as any).error.message)
      else if (aborted && res.statusCode === 200) {
        res.body.on('error', () => {})
        await new Promise<void>((resolve) => {
          let seen = 0
          res.body.on('data', () => { if (++seen === 2) { res.body.destroy(); resolve() } })
          res.body.on('end', resolve)
        })
      } else await res.body.dump()
    }
  }
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  t.same([...statuses.keys()].sort(), [200, 402], `only served or refused: ${JSON.stringify([...statuses])}`)
  t.ok(refusals.length > 0, 'the group budget bound')
  t.ok(refusals.every((m) => /monthly budget of \$0\.004 for group 'physics'/.test(m)), 'every refusal names the physics group budget')
  t.equal(fake.generations.size, statuses.get(200), 'a refused request never reached OpenRouter')
  await rowsSoon(async () => {
    const [r] = await db.sql`select (select count(*)::int from usage_events where outcome <> 'budget_exceeded') as rows,
                                    (select count(*)::int from budget_reservations) as held`
    return r.rows === statuses.get(200) && r.held === 0 ? [r] : []
  }, 30_000)

  const [{ refusedOther }] = await db.sql`select count(*)::int as "refusedOther" from usage_events where outcome = 'budget_exceeded' and not (groups @> '{physics}')`
  t.equal(refusedOther, 0, 'members of other groups were never refused')
  const rows = await db.sql`select billed_cost_usd::text as b from usage_events where billed_cost_usd is not null and groups @> '{physics}'`
  const spent = sumDecimals(rows.map((r) => r.b))
  const overruns = rows.filter((r) => !le(r.b, ESTIMATE_FLOOR)).map((r) => sumDecimals([r.b, '-' + ESTIMATE_FLOOR]))
  t.ok(overruns.length > 0, 'requests cost more than their estimate')
  for (const s of sidecars) {
    const metrics = await (await request(s.url + '/metrics', { dispatcher: agent })).body.text()
    t.match(metrics, /^usage_proxy_budget_fail_open_total(\{[^}]*\})? 0$/m, 'no admission was served without a spend check')
  }
  t.ok(le(spent, sumDecimals([GROUP_LIMIT, ...overruns])), `physics spent ${spent} <= limit ${GROUP_LIMIT} + overruns (${overruns.length})`)
  const [c] = await db.sql`select spent_usd::text as spent, reserved_usd::text as reserved from budget_counters where scope = 'group' and user_id = 'physics' and period = 'month'`
  t.equal(sumDecimals([c.spent]), spent, 'the group counter is the sum of its rows, exactly')
  t.equal(sumDecimals([c.reserved]), '0', 'every hold released')
  const [{ staff }] = await db.sql`select count(*)::int as staff from budget_counters where scope = 'group' and user_id <> 'physics'`
  t.equal(staff, 0, 'groups without a budget have no counter')
  const list = await call(sidecars[1].url, 'GET', '/admin/v1/budgets')
  const g = list.body.data.find((b: any) => b.scope === 'group')
  t.equal(g.group_id, 'physics')
  t.equal(sumDecimals([g.spent_usd]), spent, 'the list shows the group spend')
  t.equal(g.reserved_usd, '0')
  t.ok(g.resets_at, 'a month resets')
})

t.test('a user in two groups is refused by the tighter one, which the 402 names', async (t) => {
  const fake = await new FakeOpenRouter(32).start()
  fake.fixedCost = '0.0004'
  const db = await createTestDb({ migrated: true })
  const s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, BUDGET_REFRESH_MS: '100' }), { groupsOf })
  t.teardown(async () => { await s.sidecar.stop('test end'); await fake.close(); await db.drop() })
  t.equal((await call(s.url, 'PUT', '/admin/v1/budgets/groups/physics', { limit_usd: '10', period: 'month' })).status, 200)
  t.equal((await call(s.url, 'PUT', '/admin/v1/budgets/groups/staff', { limit_usd: '0.0006', period: 'day' })).status, 200)

  const first = await chat(s.url, 'ana', ['physics', 'staff'])
  t.equal(first.statusCode, 200, 'the first request fits both')
  await first.body.dump()
  await settled(db)
  const second = await chat(s.url, 'ana', ['physics', 'staff'])
  t.equal(second.statusCode, 402)
  const body = await second.body.json() as any
  t.equal(body.error.code, 'budget_exceeded')
  t.match(body.error.message, /daily budget of \$0\.0006 for group 'staff'/, 'the tighter group is named')
  t.notMatch(body.error.message, /physics/)
  const other = await chat(s.url, 'ben', ['physics'])
  t.equal(other.statusCode, 200, 'a physics member outside staff is served')
  await other.body.dump()
  await settled(db)

  const counters = await db.sql`select user_id, spent_usd::text as spent, reserved_usd::text as reserved from budget_counters where scope = 'group' order by user_id`
  t.same(counters.map((c) => [c.user_id, sumDecimals([c.spent]), sumDecimals([c.reserved])]),
    [['physics', sumDecimals(['0.00045', '0.00045']), '0'], ['staff', sumDecimals(['0.00045']), '0']], 'each group counted what its members spent, holds settled')

  // The widest refusing budget is named: the organization before a group, a group before the user.
  t.equal((await call(s.url, 'PUT', '/admin/v1/budgets/users/ana', { limit_usd: '0.0001', period: 'day' })).status, 200)
  const third = await chat(s.url, 'ana', ['physics', 'staff'])
  t.match((await third.body.json() as any).error.message, /for group 'staff'/, 'group before user')
  t.equal((await call(s.url, 'PUT', '/admin/v1/budgets/organization', { limit_usd: '0.0001', period: 'day' })).status, 200)
  const fourth = await chat(s.url, 'ana', ['physics', 'staff'])
  t.match((await fourth.body.json() as any).error.message, /organization's daily budget/, 'organization before group')

  // Admin API: GET one, DELETE, audit.
  const one = await call(s.url, 'GET', '/admin/v1/budgets/groups/staff')
  t.equal(one.status, 200)
  t.equal(one.body.limit_usd, '0.0006')
  t.equal(one.body.period, 'day')
  t.equal((await call(s.url, 'GET', '/admin/v1/budgets/groups/nobody')).status, 404)
  t.equal((await call(s.url, 'PUT', '/admin/v1/budgets/groups/staff', { limit_usd: 'x', period: 'day' })).status, 400)
  t.equal((await call(s.url, 'PUT', '/admin/v1/budgets/groups/staff', { limit_usd: '1', period: 'year' })).status, 400)
  const del = await call(s.url, 'DELETE', '/admin/v1/budgets/groups/staff')
  t.same(del.body, { object: 'budget.deleted', scope: 'group', user_id: null, group_id: 'staff', deleted: true })
  t.equal((await call(s.url, 'DELETE', '/admin/v1/budgets/groups/staff')).status, 404)
  const audit = await db.sql`select action, target, before, after from audit_log where target like 'budgets/groups/%' order by at, id`
  t.same(audit.map((a) => [a.action, a.target]), [
    ['budget.set', 'budgets/groups/physics'], ['budget.set', 'budgets/groups/staff'], ['budget.deleted', 'budgets/groups/staff']])
  const before = typeof audit[2].before === 'string' ? JSON.parse(audit[2].before) : audit[2].before
  t.same(before, { limit_usd: '0.0006', period: 'day' })
})

t.test('a group budget set mid-period starts from what the group already spent this period', async (t) => {
  const db = await createTestDb({ migrated: true })
  const fake = await new FakeOpenRouter(33).start()
  const s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }), { groupsOf })
  t.teardown(async () => { await s.sidecar.stop('test end'); await fake.close(); await db.drop() })
  const now = new Date()
  const lastMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 15))
  const row = (groups: string[], cost: string | null, at: Date, extra: Record<string, unknown> = {}) => ({
    event_id: randomUUID(), organization_id: ORG, user_id: 'u', external_user_id: 'x', endpoint: 'chat/completions', model: 'm',
    streamed: false, status: 200, outcome: 'ok', usage_source: 'inline', cost_usd: cost, markup_percent: '12.5', kind: 'chat', created_at: at, groups, estimated_cost_usd: null, api_key_id: null, ...extra,
  })
  await db.sql`insert into usage_events ${db.sql([
    row(['physics'], '0.1', now), row(['chem', 'physics'], '0.2', now), row(['chem'], '0.4', now),
    row(['physics'], '0.8', lastMonth), row(['physics'], null, now, { outcome: 'interrupted', estimated_cost_usd: '0.016' }),
    row([], '1.6', now, { api_key_id: 'k1' }), row(['physics'], '3.2', now, { api_key_id: 'k1' }),
  ] as never)}`
  const put = await call(s.url, 'PUT', '/admin/v1/budgets/groups/physics', { limit_usd: '100', period: 'month' })
  // 0.1 + 0.2 + 3.2 billed at 12.5% markup, plus the interrupted row's estimate; last month's and chem's alone are not counted.
  t.equal(sumDecimals([put.body.spent_usd]), sumDecimals(['0.1125', '0.225', '3.6', '0.016']), 'physics: this month\'s rows that name it')
  // What applies to one user: the budgets of the groups kept with their mapping.
  await db.sql`insert into user_mappings (organization_id, user_id, external_user_id, groups) values (${ORG}, 'ann', 'x-ann', '{chem,physics}'), (${ORG}, 'bob', 'x-bob', '{chem}')`
  const ann = await call(s.url, 'GET', '/admin/v1/budgets/users/ann')
  t.same(ann.body.data.map((b: any) => [b.scope, b.group_id, b.applies]), [['group', 'physics', true]], 'a member sees her group\'s budget')
  t.same((await call(s.url, 'GET', '/admin/v1/budgets/users/bob')).body.data, [], 'a non-member does not')
  await setBudget(db.sql, ORG, 'key', 'k1', '50', 'total')
  const [k] = await db.sql`select spent_usd::text as spent from budget_counters where scope = 'key' and user_id = 'k1' and period = 'total'`
  t.equal(sumDecimals([k.spent]), sumDecimals(['1.8', '3.6']), 'a key budget counts the rows it authenticated, in every period for total')
  const list = await call(s.url, 'GET', '/admin/v1/budgets')
  const key = list.body.data.find((b: any) => b.scope === 'key')
  t.equal(key.key_id, 'k1')
  t.equal(sumDecimals([key.spent_usd]), sumDecimals(['1.8', '3.6']))
  t.equal(key.resets_at, null)
})

t.test('key budgets through the store: held, refused by name, settled once, deleted', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const fake = await new FakeOpenRouter(34).start()
  const s = await startSidecar(baseEnv(fake, db.url, {}))
  await s.sidecar.stop('migrated')
  await fake.close()
  await setBudget(db.sql, ORG, 'key', 'k1', '1', 'day')
  await setBudget(db.sql, ORG, 'group', 'g1', '5', 'week')
  const reserver = new Reserver<{ refused_scope: string | null, refused_subject: string | null }>(db.sql, 'refused_scope, refused_subject', 300)
  const at = new Date().toISOString()
  const ev1 = randomUUID()
  const a = await reserver.reserve({ org: ORG, user: 'u1', groups: ['g1'], key: 'k1', eventId: ev1, amount: '0.6', at }).row
  t.same(a, { i: 0, refused_scope: null, refused_subject: null }, 'fits both')
  const held = await db.sql`select scope, user_id, reserved_usd::text as r from budget_counters order by scope, user_id`
  t.same(held.map((h) => [h.scope, h.user_id, sumDecimals([h.r])]), [['group', 'g1', sumDecimals(['0.6'])], ['key', 'k1', sumDecimals(['0.6'])]])
  const b = await reserver.reserve({ org: ORG, user: 'u2', groups: [], key: 'k1', eventId: randomUUID(), amount: '0.6', at }).row
  t.same(b, { i: 0, refused_scope: 'key', refused_subject: 'k1' }, 'the key refuses, and is named')
  const c = await reserver.reserve({ org: ORG, user: 'u2', groups: ['g1'], key: null, eventId: randomUUID(), amount: '0.6', at }).row
  t.same(c, { i: 0, refused_scope: null, refused_subject: null }, 'without the key only the group applies')
  // The first request's row lands twice (a replay): settled once.
  const row = { event_id: ev1, organization_id: ORG, user_id: 'u1', external_user_id: 'x', endpoint: 'chat/completions', model: 'm', streamed: false, status: 200, outcome: 'ok', usage_source: 'inline', cost_usd: '0.8', markup_percent: '0', kind: 'chat', created_at: at, groups: ['g1'], api_key_id: 'k1' }
  await db.sql`insert into usage_events ${db.sql(row as never)}`
  await db.sql`insert into usage_events ${db.sql(row as never)} on conflict do nothing`
  const after = await db.sql`select scope, user_id, spent_usd::text as s, reserved_usd::text as r, overrun_usd::text as o from budget_counters order by scope, user_id`
  t.same(after.map((h) => [h.scope, h.user_id, sumDecimals([h.s]), sumDecimals([h.r]), sumDecimals([h.o])]), [
    ['group', 'g1', sumDecimals(['0.8']), sumDecimals(['0.6']), sumDecimals(['0.2'])],
    ['key', 'k1', sumDecimals(['0.8']), '0', sumDecimals(['0.2'])],
  ], 'spend on both counters once, the first hold released from both, the overrun recorded')
  t.equal(await deleteBudget(db.sql, ORG, 'key', 'k1'), true)
  const d = await reserver.reserve({ org: ORG, user: 'u2', groups: [], key: 'k1', eventId: randomUUID(), amount: '5', at }).row
  t.equal(d, undefined, 'a deleted key budget no longer applies')
})
