import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, withoutServer, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, type Started } from './support/sidecar.js'
import { runVerify } from '../src/usage/reports/verify-command.js'

// Forgetting a user while two replicas serve traffic (theirs included) and the rollups are being
// compacted: every request is recorded once, each of the user's rows is under the pseudonym when
// its request arrived before the forget and under the id after it, the budget counters equal the
// rows they count to the digit, nothing is left held, and verify is clean.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const AUTH = { authorization: `Bearer ${ADMIN_KEY}` }
const VICTIM = 'u-victim'
const USERS = [VICTIM, 'u-other-1', 'u-other-2']
let fake: FakeOpenRouter
let db: TestDb
let a: Started
let b: Started

t.test('forget under concurrent traffic on two replicas', async (t) => {
  if (await withoutServer(t, 'two replicas, the ledger and the compaction contend for locks with forget')) return
  fake = await new FakeOpenRouter().start()
  fake.generationDelayMs = 0
  db = await createTestDb({ migrated: true })
  const env = { ADMIN_API_KEY: ADMIN_KEY, ORG_BUDGET_USD: '100000', USER_BUDGET_USD: '10000' }
  a = await startSidecar(baseEnv(fake, db.url, env))
  b = await startSidecar(baseEnv(fake, db.url, env))
  t.teardown(async () => {
    await a?.sidecar.stop('test end')
    await b?.sidecar.stop('test end')
    await fake?.close()
    await db?.drop()
  })

  let sent = 0
  const statuses: number[] = []
  const chat = async (base: string, user: string) => {
    sent++
    const res = await request(base + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user, 'x-openwebui-user-name': `Name of ${user}`, 'x-openwebui-chat-id': `chat-${user}` },
      body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 }),
    })
    await res.body.text()
    statuses.push(res.statusCode)
  }
  // Warm-up: the victim has rows, counters and a mapping before the forget.
  await Promise.all(USERS.flatMap((u) => [chat(a.url, u), chat(b.url, u)]))
  await settle(a.sidecar, db.sql, sent)

  let running = true
  const workers = Array.from({ length: 8 }, async (_, w) => {
    let i = 0
    while (running || i < 10) { await chat(w % 2 === 0 ? a.url : b.url, USERS[(w + i) % USERS.length]); i++ }
  })
  const compacting = (async () => { while (running) await db.sql`select usage_rollup_compact()` })()
  // Budgets written through the API meanwhile (the victim's own included): no deadlock with forget.
  const budgetStatuses: number[] = []
  const budgeting = (async () => {
    for (let i = 0; running; i++) {
      const r = await request(b.url + `/admin/v1/budgets/users/${USERS[i % USERS.length]}`, { method: 'PUT', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ limit_usd: String(5000 + i), period: 'month' }) })
      await r.body.dump()
      budgetStatuses.push(r.statusCode)
    }
  })()
  // Forget once traffic is flowing on both replicas.
  while (sent < 60) await new Promise((r) => setTimeout(r, 5))
  const del = await request(a.url + `/admin/v1/users/${VICTIM}`, { method: 'DELETE', headers: AUTH })
  const body = await del.body.json() as { user_id: string }
  t.equal(del.statusCode, 200)
  const pseudonym = body.user_id
  const forgottenAt = sent
  while (sent < forgottenAt + 60) await new Promise((r) => setTimeout(r, 5))
  running = false
  await Promise.all([...workers, compacting, budgeting])
  t.same([...new Set(statuses)], [200], `every one of ${sent} requests served`)
  t.same([...new Set(budgetStatuses)], [200], `every one of ${budgetStatuses.length} budget changes made`)
  t.equal(await settle(a.sidecar, db.sql, sent, 20_000), sent, 'every request recorded once')
  await db.sql`select usage_rollup_compact()`

  const [{ at }] = await db.sql<Array<{ at: Date }>>`select forgotten_at as at from forgotten_users where pseudonym = ${pseudonym}`
  const [split] = await db.sql<Array<{ early_named: number, late_pseudonym: number, pseudonymized: number, named_after: number }>>`
    select count(*) filter (where user_id = ${VICTIM} and created_at <= ${at})::int as early_named,
           count(*) filter (where user_id = ${pseudonym} and created_at > ${at})::int as late_pseudonym,
           count(*) filter (where user_id = ${pseudonym})::int as pseudonymized,
           count(*) filter (where user_id = ${VICTIM})::int as named_after
      from usage_events`
  t.equal(split.early_named, 0, 'no request that arrived before the forget is under the id')
  t.equal(split.late_pseudonym, 0, 'no request that arrived after it is under the pseudonym')
  t.ok(split.pseudonymized > 2 && split.named_after > 0, `both sides have rows (${split.pseudonymized} pseudonymized, ${split.named_after} after)`)
  const [{ leaks }] = await db.sql`select count(*)::int as leaks from usage_events where user_id = ${pseudonym} and (chat_id is not null or message_id is not null)`
  t.equal(leaks, 0, 'no chat id under the pseudonym')
  const [{ names }] = await db.sql`select count(*)::int as names from user_mappings where user_id = ${pseudonym} and (user_name is not null or user_email is not null)`
  t.equal(names, 0, 'no name under the pseudonym')

  // Counters equal the rows they count, to the digit; nothing is still held.
  const wrong = await db.sql`
    select c.scope, c.user_id, c.spent_usd::text as counter, coalesce(s.spent, 0)::text as rows, c.reserved_usd::text as reserved
      from budget_counters c
      left join lateral (select sum(billed_cost_usd) as spent from usage_events e
                          where e.created_at >= c.period_start and (c.scope = 'organization' or e.user_id = c.user_id)) s on true
     where c.period_start = budget_period_start(c.period, now())
       and (c.spent_usd <> coalesce(s.spent, 0) or c.reserved_usd <> 0)`
  t.same(wrong, [], 'every counter equals its rows, none holds anything')
  t.equal((await db.sql`select count(*)::int as n from budget_reservations`)[0].n, 0)
  const lines: string[] = []
  t.equal(await runVerify([], { DATABASE_URL: db.url }, (s) => lines.push(s), (s) => lines.push(s)), 0, `verify clean: ${lines.join('')}`)
  const api = await request(a.url + '/admin/v1/usage?group_by=user', { headers: AUTH })
  const report = await api.body.json() as { totals: { billed_cost_usd: string, requests: number } }
  const [raw] = await db.sql`select count(*)::int as n, trim_scale(sum(billed_cost_usd))::text as billed from usage_events`
  t.equal(report.totals.requests, raw.n)
  t.equal(report.totals.billed_cost_usd, raw.billed, 'the report\'s total is the rows\' to the digit')
})
