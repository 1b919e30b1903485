import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// Attack: a first budget written through the admin API while a flood of requests
// runs on the same sidecar, with a periodic re-read every 5 ms so one is nearly always in flight
// when the write lands. No request *sent* after the write's answer may go unchecked: with a budget
// of zero every such request must be refused (402) and none may reach OpenRouter. Then the budget
// is deleted and re-created (the deletion's re-read sets "no budgets"; the re-creation must bind
// at once again), and a key created with a zero budget must be refused on its first request.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter(7).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, PROXY_API_KEY: 'proxy-key-for-the-chat-app', BUDGET_REFRESH_MS: '5', LOG_LEVEL: 'warn' }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

interface Outcome { sentAt: number, status: number }

/**
 * Until the sidecar's re-read has found no budget: the next write is then a first budget, the
 * case under attack (a write that lands while the sidecar still believes in the last one tests
 * nothing). The deadline only fails the test.
 */
async function noBudgetsSeen (): Promise<void> {
  for (const deadline = Date.now() + 10_000; s.sidecar.limits()?.mayHaveBudgets !== false;) {
    if (Date.now() > deadline) throw new Error('the sidecar still believes a budget exists 10 s after the last was deleted')
    await new Promise((r) => setTimeout(r, 5))
  }
}

async function chat (user: string, auth?: string): Promise<number> {
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (user) headers['x-openwebui-user-id'] = user
  headers.authorization = `Bearer ${auth ?? 'proxy-key-for-the-chat-app'}`
  const res = await request(s.url + '/v1/chat/completions', {
    method: 'POST', headers,
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 }),
  })
  await res.body.dump()
  return res.statusCode
}

/** Runs `workers` loops of requests for `user` until stop(); each outcome with the time it was sent. */
function flood (user: string, workers: number): { stop: () => Promise<Outcome[]>, sentAfter: (at: number) => Promise<void> } {
  let going = true
  const outcomes: Outcome[] = []
  const loops = Array.from({ length: workers }, async () => {
    while (going) {
      const sentAt = performance.now()
      const status = await chat(user)
      outcomes.push({ sentAt, status })
    }
  })
  return {
    stop: async () => { going = false; await Promise.all(loops); return outcomes },
    // Until a request sent after `at` has its answer: however slow the database, the write is tested.
    sentAfter: async (at: number) => {
      const deadline = Date.now() + 60_000
      while (!outcomes.some((o) => o.sentAt > at) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
    },
  }
}

async function put (path: string, body: unknown): Promise<{ status: number, answeredAt: number }> {
  const res = await request(s.url + path, { method: 'PUT', headers: admin, body: JSON.stringify(body) })
  await res.body.dump()
  return { status: res.statusCode, answeredAt: performance.now() }
}

async function del (path: string): Promise<number> {
  const res = await request(s.url + path, { method: 'DELETE', headers: admin })
  await res.body.dump()
  return res.statusCode
}

function unchecked (outcomes: Outcome[], after: number): Outcome[] {
  return outcomes.filter((o) => o.sentAt > after && o.status !== 402)
}

t.test('a first user budget written during a flood binds every request sent after its 200', async (t) => {
  for (let round = 0; round < 6; round++) {
    const user = `flood-${round}`
    const f = flood(user, 8)
    await f.sentAfter(0) // a request answered before the write
    const p = await put(`/admin/v1/budgets/users/${user}`, { limit_usd: '0', period: 'month' })
    t.equal(p.status, 200, `round ${round}: the budget is written`)
    const upstreamAtAnswer = fake.requests.length
    await f.sentAfter(p.answeredAt)
    const outcomes = await f.stop()
    const bad = unchecked(outcomes, p.answeredAt)
    t.same(bad, [], `round ${round}: no request sent after the 200 went unchecked (${outcomes.length} requests)`)
    t.ok(outcomes.some((o) => o.sentAt > p.answeredAt), `round ${round}: requests were sent after the write`)
    t.ok(outcomes.some((o) => o.status === 200), `round ${round}: requests before the write went through`)
    // Requests in flight at the answer may still reach upstream; none sent later may.
    t.ok(fake.requests.length - upstreamAtAnswer <= 8, `round ${round}: at most the in-flight requests reached upstream after the write`)
    // Back to "no budgets" for the next round: delete it and let a re-read say so.
    t.equal(await del(`/admin/v1/budgets/users/${user}`), 200)
    await noBudgetsSeen()
  }
})

t.test('deleted then re-created: the re-creation binds at once', async (t) => {
  const user = 'recreated'
  for (let round = 0; round < 6; round++) {
    t.equal((await put(`/admin/v1/budgets/users/${user}`, { limit_usd: '0', period: 'day' })).status, 200)
    t.equal(await chat(user), 402, `round ${round}: refused right after the write`)
    t.equal(await del(`/admin/v1/budgets/users/${user}`), 200)
    const f = flood(user, 4)
    await f.sentAfter(0) // the flood runs: a request answered before the write
    const p = await put(`/admin/v1/budgets/users/${user}`, { limit_usd: '0', period: 'day' })
    t.equal(p.status, 200)
    await f.sentAfter(p.answeredAt)
    const outcomes = await f.stop()
    t.same(unchecked(outcomes, p.answeredAt), [], `round ${round}: nothing sent after the re-creation went unchecked`)
    t.equal(await del(`/admin/v1/budgets/users/${user}`), 200)
  }
})

t.test('an organization budget and a default-user budget bind at once too', async (t) => {
  for (const [path, scope] of [['/admin/v1/budgets/organization', 'organization'], ['/admin/v1/budgets/default-user', 'default-user']] as const) {
    await noBudgetsSeen()
    const f = flood(`any-${scope}`, 6)
    await f.sentAfter(0) // the flood runs: a request answered before the write
    const p = await put(path, { limit_usd: '0', period: 'month' })
    if (p.status === 404) { t.comment(`no route ${path}`); await f.stop(); continue }
    t.equal(p.status, 200, `${scope} budget written`)
    await f.sentAfter(p.answeredAt)
    const outcomes = await f.stop()
    t.same(unchecked(outcomes, p.answeredAt), [], `${scope}: nothing sent after the write went unchecked`)
    t.equal(await del(path), 200)
  }
})

t.test('a key created with a zero budget is refused on its first request, during a flood', async (t) => {
  await noBudgetsSeen()
  const f = flood('bystander', 6)
  await f.sentAfter(0) // the flood runs: a request answered before the first key
  for (let i = 0; i < 5; i++) {
    const res = await request(s.url + '/admin/v1/keys', { method: 'POST', headers: admin, body: JSON.stringify({ name: `zero-${i}`, budget: { limit_usd: '0', period: 'month' } }) })
    const body = await res.body.json() as { id: string, key: string }
    t.equal(res.statusCode, 201)
    t.equal(await chat('', body.key), 402, `key ${i}: refused on its first request`)
    t.equal((await request(s.url + `/admin/v1/keys/${body.id}`, { method: 'DELETE', headers: admin })).statusCode, 200)
    // A revoked key keeps its budget row: removed here, behind the sidecar's back, so that the
    // next key's budget is again a first one once a re-read has seen none.
    await db.sql`delete from budgets where scope = 'key'`
    await noBudgetsSeen()
  }
  await f.stop()
})
