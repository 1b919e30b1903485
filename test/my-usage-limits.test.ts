import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { cachedSummary } from '../src/usage/reports/my-usage-cache.js'

// "My usage" is free but not unlimited: it counts toward USER_RPM and USER_MAX_CONCURRENT (budgets
// never apply to it), and its answer is kept per user for a few seconds, so a user or a script
// asking again and again costs no more queries. The cache is keyed by user, expires, is bounded and
// forgets a budget the admin API just changed.

const MODEL = 'usage-proxy/my-usage'
const ADMIN_KEY = 'admin-key-0123456789abcdef'
let fake: FakeOpenRouter
let db: TestDb
let s: Started
/** No rate limits: for the cache, asked many times. */
let free: Started

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  const common = { USER_BUDGET_USD: '0', ADMIN_API_KEY: ADMIN_KEY, SHUTDOWN_GRACE_MS: '200' }
  s = await startSidecar(baseEnv(fake, db.url, { USER_RPM: '3', USER_MAX_CONCURRENT: '1', ...common }))
  free = await startSidecar(baseEnv(fake, db.url, common))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await free?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

function ask (user: string, model = MODEL, extra: Record<string, unknown> = {}, base = s.url) {
  return request(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'How much did I use?' }], ...extra }),
  })
}

async function status (user: string, model = MODEL): Promise<number> {
  const r = await ask(user, model)
  await r.body.dump()
  return r.statusCode
}

t.test('USER_RPM counts "My usage": the fourth in a minute is a 429, and so is the next chat', async (t) => {
  // The window is the database clock's minute: a round whose requests all fell in one minute is
  // judged; one that crossed a minute is run again by a fresh user (the next round starts in a new
  // minute and takes far less than one, so two rounds suffice).
  const minute = async () => (await db.sql`select date_trunc('minute', clock_timestamp())::text as m`)[0].m as string
  let got: number[] = []
  let r!: Awaited<ReturnType<typeof ask>>
  let chat = 0
  for (let round = 0; round < 2; round++) {
    const user = round === 0 ? 'rita' : 'rita-again'
    const began = await minute()
    got = []
    for (let i = 0; i < 5; i++) got.push(await status(user))
    r = await ask(user)
    chat = await status(user, 'fake/ok')
    if (await minute() === began) break
    await r.body.dump()
  }
  t.same(got, [200, 200, 200, 429, 429])
  t.equal(r.statusCode, 429)
  t.ok(Number(r.headers['retry-after']) >= 1, 'Retry-After in seconds')
  t.equal(r.headers['x-ratelimit-limit-requests'], '3')
  t.match(await r.body.json(), { error: { type: 'rate_limit_exceeded', code: 'rate_limit_exceeded', message: /3 per minute/ } })
  t.equal(chat, 429, 'the window "My usage" filled holds for chat requests too')
  t.equal(await status('other-user'), 200, 'per user: someone else is not affected')
})

t.test('USER_MAX_CONCURRENT counts "My usage": refused while the user has a request in flight; its own slot is given back', async (t) => {
  // Its own slot goes back once answered: one after the other, never "too many in progress".
  t.same([await status('cora'), await status('cora'), await status('cora')], [200, 200, 200])
  // A request that never answers holds cora's only slot (a budget of $0 would refuse it: give her one).
  const put = await request(`${s.url}/admin/v1/budgets/users/dora`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ limit_usd: '100', period: 'month' }) })
  t.equal(put.statusCode, 200)
  await put.body.dump()
  const before = fake.requests.length
  const hanging = ask('dora', 'fake/silent', { stream: true }).catch(() => null)
  const deadline = Date.now() + 10_000
  while (fake.requests.length === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  t.equal(fake.requests.length, before + 1, 'the silent request reached upstream: its slot is taken')
  const r = await ask('dora')
  t.equal(r.statusCode, 429)
  t.match(await r.body.json(), { error: { code: 'rate_limit_exceeded', message: /1 at a time/ } })
  void hanging // ends when the sidecar stops
})

t.test('budgets never apply to "My usage": a user with $0 left still reads why', async (t) => {
  const chat = await ask('zero')
  t.equal(chat.statusCode, 200)
  const text = ((await chat.body.json()) as { choices: Array<{ message: { content: string } }> }).choices[0].message.content
  t.match(text, /Budget: \$0[.0]* per month/)
  t.equal(await status('zero', 'fake/ok'), 402, 'while a chat request is refused')
})

t.test('the answer is per user, reused within a few seconds, and renewed after', async (t) => {
  const content = async (user: string): Promise<string> => {
    const r = await ask(user, MODEL, {}, free.url)
    t.equal(r.statusCode, 200)
    return ((await r.body.json()) as { choices: Array<{ message: { content: string } }> }).choices[0].message.content
  }
  const budget = (text: string) => /Budget: [^\n]*/.exec(text)![0]
  // Two users with different budgets, asked back to back: each sees their own.
  for (const [u, limit] of [['ann', '7'], ['ben', '9']]) {
    const put = await request(`${free.url}/admin/v1/budgets/users/${u}`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ limit_usd: limit, period: 'month' }) })
    t.equal(put.statusCode, 200)
    await put.body.dump()
  }
  t.match(budget(await content('ann')), '$7.00 per month')
  t.match(budget(await content('ben')), '$9.00 per month', 'ben gets his own answer, not ann\'s')
  t.match(budget(await content('ann')), '$7.00 per month')
  // A budget written through this process's admin API shows at once.
  const put = await request(`${free.url}/admin/v1/budgets/users/ann`, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ limit_usd: '8', period: 'month' }) })
  t.equal(put.statusCode, 200)
  await put.body.dump()
  t.match(budget(await content('ann')), '$8.00 per month', 'the admin API\'s change is not hidden by the cache')
  // A change behind the sidecar's back (psql, another replica) shows once the answer expires.
  await db.sql`update budgets set limit_usd = 11 where scope = 'user' and user_id = 'ben'`
  const deadline = Date.now() + 20_000
  let seen = ''
  while (Date.now() < deadline) {
    seen = budget(await content('ben'))
    if (seen.includes('$11.00')) break
    await new Promise((r) => setTimeout(r, 250))
  }
  t.match(seen, '$11.00 per month', 'the cached answer expired and was read again')
})

t.test('cachedSummary: keyed by user, one read for requests that arrive together, expires, bounded, failures not kept', async (t) => {
  let clock = 0
  const reads: string[] = []
  let fail = false
  const cache = cachedSummary(async (who: { userId: string | null }, ext: string) => {
    reads.push(`${who.userId}/${ext}`)
    if (fail) throw new Error('db down')
    return `summary of ${who.userId} (${ext}) #${reads.length}`
  }, { ttlMs: 5000, max: 3, now: () => clock })
  const [a1, a2] = await Promise.all([cache.get({ userId: 'a' }, 'ext-a'), cache.get({ userId: 'a' }, 'ext-a')])
  t.equal(a1, 'summary of a (ext-a) #1')
  t.equal(a2, a1, 'together: one read')
  t.equal(await cache.get({ userId: 'b' }, 'ext-b'), 'summary of b (ext-b) #2', 'another user: their own read')
  t.equal(await cache.get({ userId: null }, 'org'), 'summary of null (org) #3', 'no user is a key of its own')
  clock = 4999
  t.equal(await cache.get({ userId: 'a' }, 'ext-a'), a1, 'reused within the time to live')
  t.equal(reads.length, 3)
  clock = 5000
  t.equal(await cache.get({ userId: 'a' }, 'ext-a'), 'summary of a (ext-a) #4', 'read again once it expired')
  clock = 6000
  await cache.get({ userId: 'c' }, 'ext-c')
  await cache.get({ userId: 'd' }, 'ext-d')
  t.ok(cache.size <= 3, `bounded: ${cache.size} entries kept`)
  fail = true
  await t.rejects(cache.get({ userId: 'e' }, 'ext-e'))
  fail = false
  const next = reads.length + 1
  t.equal(await cache.get({ userId: 'e' }, 'ext-e'), `summary of e (ext-e) #${next}`, 'a failed read is not kept')
  cache.clear()
  t.equal(cache.size, 0)
})
