import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, type Started } from './support/sidecar.js'
import { ORG, seedLedger } from './support/seed.js'
import { runVerify } from '../src/usage/reports/verify-command.js'
import { buildStatement } from '../src/usage/reports/statement.js'
import { externalUserId } from '../src/identity/external-id.js'
import type { Sql } from '../src/db/connect.js'

// Forgetting a user through DELETE /admin/v1/users/{userId}: the id, name, email, chat and
// message ids are gone from every table, every total (usage API, billing views, statement) is
// the same to the last digit before and after, verify stays clean, one audit line names the
// pseudonym; a second forget changes nothing; a request in flight lands under the pseudonym.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const AUTH = { authorization: `Bearer ${ADMIN_KEY}` }
const FROM = '2026-09-01'
const TO = '2027-01-01'
const ANNA = 'u-anna'
let fake: FakeOpenRouter
let db: TestDb
let on: Started

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }))
  await seedLedger(db.sql, { rows: 600, from: '2026-09-28', days: 38 })
  await db.sql`update usage_events set chat_id = 'chat-of-anna', message_id = 'msg-of-anna' where user_id = ${ANNA}`
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

async function chat (user: string, headers: Record<string, string> = {}) {
  const res = await request(on.url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user, 'x-openwebui-user-name': 'Anna%20M', 'x-openwebui-user-email': 'anna@acme.test', 'x-openwebui-chat-id': 'chat-live', ...headers },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 }),
  })
  await res.body.text()
  return res.statusCode
}

const GROUP_BYS = ['user', 'model', 'day', 'task', 'outcome']

/** Every total a person or an invoice reads, keyed so a user's rows can be renamed. */
async function snapshot (): Promise<Record<string, any>> {
  const out: Record<string, any> = {}
  for (const g of GROUP_BYS) {
    const r = await call('GET', `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=${g}`)
    if (r.status !== 200) throw new Error(`usage ${g}: ${r.status}`)
    out[`usage.${g}.totals`] = r.body.totals
    out[`usage.${g}.data`] = Object.fromEntries(r.body.data.map((row: any) => {
      const { budget: _b, user_name: _n, user_email: _e, ...sums } = row
      return [String(row[g]), sums]
    }))
  }
  out.spend_per_model_month = await db.sql`select month::text, model, kind, requests::text, prompt_tokens::text, completion_tokens::text, cost_usd::text, billed_cost_usd::text
    from spend_per_model_month order by 1, 2, 3`
  out.spend_per_day = await db.sql`select day::text, kind, requests::text, failed_or_aborted::text, total_tokens::text, cost_usd::text, billed_cost_usd::text
    from spend_per_day order by 1, 2`
  out.spend_per_user_month = Object.fromEntries((await db.sql<Array<{ k: string, v: string }>>`
    select coalesce(user_id, '-') || '|' || month || '|' || kind as k, requests || '|' || prompt_tokens || '|' || completion_tokens || '|' || cost_usd || '|' || billed_cost_usd as v
      from spend_per_user_month`).map((r) => [r.k, r.v]))
  out.raw = (await db.sql`select count(*)::text as n, sum(cost_usd)::text as cost, sum(billed_cost_usd)::text as billed, sum(total_tokens)::text as tokens from usage_events`)[0]
  for (const month of ['2026-09', '2026-10', '2026-11', '2026-12']) {
    const s = await buildStatement(db.sql as unknown as Sql, ORG, month)
    out[`statement.${month}`] = s.organizations[0]?.total ?? null
  }
  return JSON.parse(JSON.stringify(out))
}

/** The snapshot with the forgotten user's keys renamed to the pseudonym. */
function renamed (s: Record<string, any>, from: string, to: string): Record<string, any> {
  const r = JSON.parse(JSON.stringify(s))
  const data = r['usage.user.data']
  if (data[from]) { data[to] = { ...data[from], user: to }; delete data[from] }
  r.spend_per_user_month = Object.fromEntries(Object.entries(r.spend_per_user_month).map(([k, v]) => [k.startsWith(from + '|') ? to + k.slice(from.length) : k, v]))
  return r
}

async function mentions (text: string): Promise<string[]> {
  const rows = await db.sql<Array<{ t: string }>>`
    select 'usage_events' as t from usage_events where user_id = ${text} or chat_id like '%anna%' or message_id like '%anna%' or external_user_id = ${externalUserId(ORG, text)}
    union all select 'usage_daily_rollups' from usage_daily_rollups where user_id = ${text} or external_user_id = ${externalUserId(ORG, text)}
    union all select 'usage_monthly_rollups' from usage_monthly_rollups where user_id = ${text} or external_user_id = ${externalUserId(ORG, text)}
    union all select 'usage_rollup_deltas' from usage_rollup_deltas where user_id = ${text} or external_user_id = ${externalUserId(ORG, text)}
    union all select 'user_mappings' from user_mappings where user_id = ${text} or user_name like 'Anna%' or user_email like 'anna@%'
    union all select 'budgets' from budgets where user_id = ${text}
    union all select 'budget_counters' from budget_counters where user_id = ${text}
    union all select 'budget_reservations' from budget_reservations where user_id = ${text}
    union all select 'rate_windows' from rate_windows where user_id = ${text}
    union all select 'rate_leases' from rate_leases where user_id = ${text}
    union all select 'audit_log' from audit_log where target like '%' || ${text} || '%' or before::text like '%' || ${text} || '%' or after::text like '%' || ${text} || '%'`
  return [...new Set(rows.map((r) => r.t))]
}

let pseudonym = ''

t.test('forget: erased everywhere, every total the same to the digit, verify clean, one audit line', async (t) => {
  t.equal((await call('PUT', `/admin/v1/budgets/users/${ANNA}`, { limit_usd: '1000', period: 'month' })).status, 200)
  t.equal((await call('PUT', '/admin/v1/budgets/default-user', { limit_usd: '1000', period: 'month' })).status, 200)
  // Live traffic of hers: counters, a mapping with her name, rows today.
  for (let i = 0; i < 3; i++) t.equal(await chat(ANNA), 200)
  await settle(on.sidecar, db.sql, 603)
  await db.sql`select usage_rollup_compact()`
  t.ok((await mentions(ANNA)).length >= 5, 'before: she is in rows, rollups, mapping, budgets, audit')
  const before = await snapshot()

  const r = await call('DELETE', `/admin/v1/users/${ANNA}`)
  t.equal(r.status, 200)
  t.match(r.body, { object: 'user.forgotten', forgotten: true, already_forgotten: false })
  pseudonym = r.body.user_id
  t.match(pseudonym, /^forgotten:[0-9a-f]{16}$/)
  t.notOk(JSON.stringify(r.body).includes(ANNA), 'the answer does not repeat the erased id')

  t.same(await mentions(ANNA), [], 'no table names her id, name, email, chat or message ids')
  const after = await snapshot()
  t.same(after, renamed(before, ANNA, pseudonym), 'every total, per user, model, day, task, outcome, view and statement, to the digit')
  t.equal(after['usage.user.data'][pseudonym].cost_usd, before['usage.user.data'][ANNA].cost_usd)

  const mine = await call('GET', `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=day&user=${encodeURIComponent(pseudonym)}`)
  t.equal(mine.body.totals.billed_cost_usd, before['usage.user.data'][ANNA].billed_cost_usd, '?user=<pseudonym> finds her usage')
  const users = await call('GET', `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=user`)
  const row = users.body.data.find((d: any) => d.user === pseudonym)
  t.equal(row.user_name, null)
  t.equal(row.user_email, null)
  t.equal(row.budget?.limit_usd, '1000', 'her budget is the pseudonym\'s')

  const lines: string[] = []
  t.equal(await runVerify([], { DATABASE_URL: db.url }, (s) => lines.push(s), (s) => lines.push(s)), 0, `verify clean: ${lines.join('')}`)

  const audit = await call('GET', '/admin/v1/audit?limit=10')
  t.match(audit.body.data[0], { action: 'user.forgotten', target: `users/${pseudonym}`, actor: /^admin-key:[0-9a-f]{12}$/ })
  t.ok(audit.body.data.some((a: any) => a.action === 'budget.set' && a.target === `budgets/users/${pseudonym}`), 'her earlier budget line names the pseudonym')
  t.notOk(JSON.stringify(audit.body).includes(ADMIN_KEY), 'the trail never holds the key')
})

t.test('forget is idempotent, and an unknown user is 404', async (t) => {
  const auditBefore = (await db.sql`select count(*)::int as n from audit_log`)[0].n
  const again = await call('DELETE', `/admin/v1/users/${ANNA}`)
  t.equal(again.status, 200)
  t.match(again.body, { user_id: pseudonym, already_forgotten: true })
  t.equal((await db.sql`select count(*)::int as n from audit_log`)[0].n, auditBefore, 'nothing changed, nothing appended')
  const byPseudonym = await call('DELETE', `/admin/v1/users/${encodeURIComponent(pseudonym)}`)
  t.match(byPseudonym.body, { user_id: pseudonym, already_forgotten: true }, 'the pseudonym itself is already forgotten')
  t.equal((await call('DELETE', '/admin/v1/users/forgotten:0000000000000000')).status, 404)
  const unknown = await call('DELETE', '/admin/v1/users/nobody-ever')
  t.equal(unknown.status, 404)
  t.equal(unknown.body.error.code, 'user_not_found')
  t.equal((await call('DELETE', `/admin/v1/users/${'x'.repeat(300)}`)).status, 400)
})

t.test('the same id coming back is a new user; forgetting it again merges into the same pseudonym, sums exact', async (t) => {
  for (let i = 0; i < 2; i++) t.equal(await chat(ANNA), 200)
  await settle(on.sidecar, db.sql, 605)
  const [{ n }] = await db.sql<Array<{ n: number }>>`select count(*)::int as n from usage_events where user_id = ${ANNA}`
  t.equal(n, 2, 'requests after the forget are hers again (a new user)')
  await db.sql`select usage_rollup_compact()`
  const before = await snapshot()
  // Her new rows share today's day, model and task with the pseudonym's: the rollup keys collide.
  const r = await call('DELETE', `/admin/v1/users/${ANNA}`)
  t.equal(r.status, 200)
  t.match(r.body, { user_id: pseudonym, already_forgotten: false })
  const after = await snapshot()
  const expected = renamed(before, ANNA, pseudonym)
  // The pseudonym's per-user sums are now hers added to its own.
  const a = before['usage.user.data'][ANNA]
  const p = before['usage.user.data'][pseudonym]
  expected['usage.user.data'][pseudonym] = Object.fromEntries(Object.entries(p).map(([k, v]) => [k, k === 'user' ? pseudonym
    : typeof v === 'number' ? v + (a[k] as number) : sumDecimals([String(v), String(a[k])])]))
  for (const k of Object.keys(expected.spend_per_user_month)) if (k.startsWith(pseudonym + '|') && before.spend_per_user_month[k.replace(pseudonym, ANNA)] && before.spend_per_user_month[k]) {
    const x = before.spend_per_user_month[k].split('|'); const y = before.spend_per_user_month[k.replace(pseudonym, ANNA)].split('|')
    expected.spend_per_user_month[k] = x.map((v: string, i: number) => sumDecimals([v, y[i]])).join('|')
  }
  t.same(after['usage.user.data'], JSON.parse(JSON.stringify(expected['usage.user.data'])), 'merged per-user sums exact')
  for (const k of Object.keys(after)) if (k !== 'usage.user.data' && k !== 'spend_per_user_month') t.same(after[k], before[k], `${k} unchanged`)
  t.same(await mentions(ANNA), [])
  const [{ dup }] = await db.sql<Array<{ dup: number }>>`select count(*)::int as dup from (select 1 from usage_daily_rollups group by organization_id, day, external_user_id, model, kind having count(*) > 1) x`
  t.equal(dup, 0)
  const lines: string[] = []
  t.equal(await runVerify([], { DATABASE_URL: db.url }, (s) => lines.push(s), (s) => lines.push(s)), 0, `verify clean: ${lines.join('')}`)
})

t.test('a request in flight when the user is forgotten lands under the pseudonym', async (t) => {
  const rows = (await db.sql<Array<{ n: number }>>`select count(*)::int as n from usage_events`)[0].n
  t.equal(await chat(ANNA), 200, 'she is back (a new user), so there is someone to forget')
  await settle(on.sidecar, db.sql, rows + 1)
  fake.holdAt = 'body'
  const pending = chat(ANNA)
  while (fake.held < 1) await new Promise((r) => setTimeout(r, 10))
  t.equal((await call('DELETE', `/admin/v1/users/${ANNA}`)).status, 200)
  fake.release()
  t.equal(await pending, 200)
  await settle(on.sidecar, db.sql, rows + 2)
  // Its row and mapping reach Postgres after the forget, stamped with the time the request
  // arrived: written under the pseudonym, without chat id, name or email.
  t.same(await mentions(ANNA), [], 'the record still in the ledger\'s queue landed under the pseudonym, its mapping too')
  const [{ n, clean }] = await db.sql<Array<{ n: number, clean: number }>>`
    select count(*)::int as n, count(*) filter (where chat_id is null and message_id is null)::int as clean from usage_events where user_id = ${pseudonym}`
  t.equal(clean, n)
  await db.sql`select usage_rollup_compact()`
  const lines: string[] = []
  t.equal(await runVerify([], { DATABASE_URL: db.url }, (s) => lines.push(s), (s) => lines.push(s)), 0, `verify clean: ${lines.join('')}`)
})

t.test('audit rows cannot be edited or deleted, even with SQL', async (t) => {
  await t.rejects(db.sql`update audit_log set actor = 'someone-else'`, { code: '42501' })
  await t.rejects(db.sql`delete from audit_log`, { code: '42501' })
  await t.rejects(db.sql.begin(async (tx) => { await tx`select set_config('usage_proxy.audit_rewrite', 'forget', true)`; await tx`delete from audit_log` }), { code: '42501' },
    'the forget setting allows a rewrite, never a delete')
  t.ok((await db.sql`select count(*)::int as n from audit_log`)[0].n > 0)
  for (const method of ['PUT', 'DELETE', 'POST', 'PATCH']) {
    const r = await request(on.url + '/admin/v1/audit', { method: method as 'PUT', headers: AUTH })
    await r.body.dump()
    t.ok([404, 405].includes(r.statusCode), `${method} /admin/v1/audit is refused (${r.statusCode})`)
  }
})

