import t, { type Test } from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, withoutServer, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { ORG } from './support/seed.js'

// Admission is isolated from load: nothing a user can send and nothing the operator does makes a
// budget check fail open. Admissions run on a pool of their own; "My usage" floods, long usage
// reports and a main pool held by blocked queries leave them untouched. Failing open is kept for a
// database that really does not answer (test/admission-fail-open.test.ts).

const MODEL = 'usage-proxy/my-usage'
const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(9).start() })
t.teardown(() => fake.close())

function chat (base: string, user: string, model = 'fake/ok') {
  return request(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user },
    body: JSON.stringify({ model, max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }),
  })
}

async function statusOf (p: ReturnType<typeof chat>): Promise<number> {
  const r = await p
  await r.body.dump()
  return r.statusCode
}

async function sidecar (t: Test, env: Record<string, string>): Promise<{ db: TestDb, s: Started }> {
  const db = await createTestDb({ migrated: true })
  const s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, SHUTDOWN_GRACE_MS: '200', ...env }))
  t.teardown(async () => { await s.sidecar.stop('test end'); await db.drop() })
  return { db, s }
}

async function putBudget (base: string, user: string, limit: string): Promise<void> {
  const r = await request(`${base}/admin/v1/budgets/users/${user}`, { method: 'PUT', headers: admin, body: JSON.stringify({ limit_usd: limit, period: 'month' }) })
  if (r.statusCode !== 200) throw new Error(`PUT budget: ${r.statusCode} ${await r.body.text()}`)
  await r.body.dump()
}

async function failedOpen (base: string): Promise<number> {
  const r = await request(`${base}/admin/v1/admissions`, { headers: admin })
  return ((await r.body.json()) as { failed_open: number }).failed_open
}

/** The fail-open log lines, to say why when an assertion fails. */
const why = (s: Started): string => s.logs.lines.filter((l) => l.includes('WITHOUT a spend check')).join('').slice(0, 2000)

/** This month's rows for `users` users, so a report lists them all (and "My usage" has work to do). */
async function seedUsers (db: TestDb, users: number, perUser: number): Promise<void> {
  await db.sql`insert into organizations (id, name, markup_percent) values (${ORG}, 'Acme GmbH', '12.5') on conflict (id) do nothing`
  await db.sql`
    insert into user_mappings (organization_id, user_id, external_user_id, user_name)
    select ${ORG}, 'seed-' || u, ${ORG} || '-seed-' || u, 'Seed ' || u from generate_series(1, ${users}) u`
  await db.sql`
    insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, provider, streamed,
                              status, outcome, usage_source, prompt_tokens, completion_tokens, total_tokens, cost_usd, markup_percent, kind, created_at)
    select gen_random_uuid(), 'gen-' || u || '-' || n, ${ORG}, 'seed-' || u, ${ORG} || '-seed-' || u, 'chat/completions', 'fake/ok', 'Fake', false,
           200, 'ok', 'inline', 10, 5, 15, 0.000001 * (1 + n), '12.5', 'chat', date_trunc('month', now()) + make_interval(secs => (u * 7 + n) % 3600)
      from generate_series(1, ${users}) u, generate_series(1, ${perUser}) n`
}

// Admissions have connections of their own only on a server: the embedded database is one session,
// which the sidecar shares between admissions and reports.
const WHY = 'admissions on their own connections, beside a flood of reports'

t.test('(a) a flood of "My usage" from hundreds of users: a user with a $0 budget is refused every time, never served', async (t) => {
  if (await withoutServer(t, WHY)) return
  const { db, s } = await sidecar(t, { USER_BUDGET_USD: '0' })
  await seedUsers(db, 200, 20)
  t.equal(await statusOf(chat(s.url, 'broke')), 402, 'refused before the flood')
  const upstreamBefore = fake.requests.filter((r) => r.body.includes('"max_tokens":10')).length
  let flooding = true
  const flood = Promise.all(Array.from({ length: 200 }, (_, i) => statusOf(chat(s.url, `seed-${i + 1}`, MODEL))))
    .finally(() => { flooding = false })
  const broke: number[] = []
  const asking = (async () => {
    // One asker, again and again, until the flood has been answered (and at least 5 times).
    while (flooding || broke.length < 5) broke.push(await statusOf(chat(s.url, 'broke')))
  })()
  const answered = await flood
  await asking
  t.ok(broke.length >= 5, `the $0 user asked ${broke.length} times during the flood`)
  t.same([...new Set(broke)], [402], `every one refused: ${JSON.stringify(broke.reduce<Record<number, number>>((m, x) => ({ ...m, [x]: (m[x] ?? 0) + 1 }), {}))}`)
  t.same(answered.reduce<Record<number, number>>((m, x) => ({ ...m, [x]: (m[x] ?? 0) + 1 }), {}), { 200: 200 }, 'and the flood itself was answered')
  t.equal(fake.requests.filter((r) => r.body.includes('"max_tokens":10')).length, upstreamBefore, 'nothing of the $0 user reached OpenRouter')
  t.equal(await failedOpen(s.url), 0, `no admission failed open ${why(s)}`)
})

t.test('(b) long usage reports over thousands of users: admissions meanwhile never fail open', async (t) => {
  if (await withoutServer(t, WHY)) return
  const { db, s } = await sidecar(t, { USER_BUDGET_USD: '0' })
  await seedUsers(db, 3000, 2)
  await putBudget(s.url, 'seed-7', '3')
  const report = async (): Promise<Array<{ user: string, budget: { limit_usd: string } | null }>> => {
    const r = await request(`${s.url}/admin/v1/usage?group_by=user`, { headers: admin })
    if (r.statusCode !== 200) throw new Error(`report: ${r.statusCode}`)
    return ((await r.body.json()) as { data: Array<{ user: string, budget: { limit_usd: string } | null }> }).data
  }
  let reporting = true
  const reports = Promise.all(Array.from({ length: 3 }, () => report())).finally(() => { reporting = false })
  const broke: number[] = []
  while (reporting || broke.length < 5) broke.push(await statusOf(chat(s.url, 'broke')))
  const pages = await reports
  t.same([...new Set(broke)], [402], `the $0 user was refused all ${broke.length} times while the reports ran`)
  t.equal(pages[0].length, 3000, 'a report lists every user')
  const byUser = new Map(pages[0].map((r) => [r.user, r.budget]))
  t.equal(byUser.get('seed-7')?.limit_usd, '3', 'a user\'s own budget')
  t.equal(byUser.get('seed-8')?.limit_usd, '0', 'the default budget of the others')
  t.equal(await failedOpen(s.url), 0, `no admission failed open ${why(s)}`)
})

t.test('(c) the main pool held by blocked queries: admissions still complete through their own connections', async (t) => {
  if (await withoutServer(t, WHY)) return
  const { db, s } = await sidecar(t, { USER_BUDGET_USD: '0', USER_RPM: '1000', DATABASE_POOL_MAX: '5' })
  await putBudget(s.url, 'rich', '100')
  t.equal(await statusOf(chat(s.url, 'rich')), 200, 'served before')
  // Every query that reads usage_events now waits for this lock: "My usage" and reports take the
  // main pool's five connections and keep them.
  const held = await db.sql.reserve()
  await held`begin`
  await held`lock table usage_events in access exclusive mode`
  const mine = Array.from({ length: 12 }, (_, i) => statusOf(chat(s.url, `reader-${i}`, MODEL)))
  const waiting = async () => {
    const [r] = await db.sql<[{ n: number }]>`
      select count(*)::int as n from pg_stat_activity
       where datname = ${db.name} and application_name = 'usage-proxy' and wait_event_type = 'Lock'`
    return r.n
  }
  const deadline = Date.now() + 15_000
  while (await waiting() < 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  t.ok(await waiting() >= 5, 'the main pool is held: five of its connections wait on the lock')
  try {
    t.equal(await statusOf(chat(s.url, 'broke')), 402, 'the $0 user is refused, not served unchecked')
    t.equal(await statusOf(chat(s.url, 'rich')), 200, 'a user with money is admitted')
    const [r] = await db.sql<[{ n: number }]>`select count(*)::int as n from budget_reservations where user_id = 'rich'`
    t.ok(r.n >= 1, 'with a reservation: the admission reached Postgres')
    t.equal(await failedOpen(s.url), 0, `no admission failed open ${why(s)}`)
    t.notMatch(s.logs.text, /WITHOUT a spend check/)
  } finally {
    await held`rollback`
    held.release()
  }
  t.same([...new Set(await Promise.all(mine))], [200], '"My usage" answered once the lock went')
})
