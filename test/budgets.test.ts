import t from 'tap'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import OpenAI, { APIError } from 'openai'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// Budgets end to end through the sidecar: the admin API, the 402 before any byte, the refused
// request's row, settlement by the trigger, env seeding, rate limits and warnings.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter(7).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, BUDGET_REFRESH_MS: '100' }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function call (method: string, path: string, body?: unknown, headers: Record<string, string> = admin) {
  const res = await request(s.url + path, { method: method as 'GET', headers, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body) })
  return { status: res.statusCode, headers: res.headers, body: await res.body.json() as any }
}

function chat (base: string, user: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  return request(base + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user, ...headers },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10, ...extra }),
  })
}

/** The user's counter for their budget's period, and the organization's for its period. */
async function counters (user: string) {
  return db.sql<Array<{ scope: string, spent: string, reserved: string }>>`
    select c.scope, c.spent_usd::text as spent, c.reserved_usd::text as reserved from budget_counters c
      join budgets b on b.period = c.period and b.limit_usd is not null
       and ((b.scope = 'organization' and c.scope = 'organization') or (b.scope = 'user' and c.scope = 'user' and b.user_id = c.user_id))
     where c.user_id in ('', ${user}) and c.period_start = budget_period_start(c.period, now()) order by c.scope`
}

async function billed (user: string): Promise<string> {
  const rows = await db.sql<Array<{ b: string | null }>>`select billed_cost_usd::text as b from usage_events where user_id = ${user} and billed_cost_usd is not null`
  return sumDecimals(rows.map((r) => r.b!))
}

const same = (a: string, b: string) => sumDecimals([a]) === sumDecimals([b])

t.test('admin API: the key is required on every budget route', async (t) => {
  for (const [m, p] of [['GET', '/admin/v1/budgets'], ['PUT', '/admin/v1/budgets/organization'], ['DELETE', '/admin/v1/budgets/users/u1'], ['GET', '/admin/v1/budgets/users/u1']]) {
    const r = await call(m, p, m === 'PUT' ? { limit_usd: '1', period: 'day' } : undefined, { authorization: 'Bearer wrong-key-0123456789' })
    t.equal(r.status, 401, `${m} ${p}`)
    t.equal(r.body.error.type, 'authentication_error')
  }
  t.equal((await db.sql`select count(*)::int as n from budgets`)[0].n, 0, 'nothing written')
  const v1 = await request(s.url + '/v1/admin/v1/budgets', { headers: admin })
  t.not(v1.statusCode, 200, 'never under /v1')
  await v1.body.dump()
})

t.test('admin API: validation answers 400 with an OpenAI-style error', async (t) => {
  const bad: unknown[] = ['{not json', [], { limit_usd: '20.00' }, { limit_usd: '20.00', period: 'year' }, { limit_usd: '-1', period: 'day' },
    { limit_usd: 'ten', period: 'day' }, { limit_usd: 1e-7, period: 'day' }, { limit_usd: '5', period: 'day', extra: 1 }, { period: 'month' }, { limit_usd: null, period: 'month' }]
  for (const b of bad) {
    const r = await call('PUT', '/admin/v1/budgets/organization', b)
    t.equal(r.status, 400, JSON.stringify(b))
    t.match(r.body, { error: { type: 'invalid_request_error', code: 'invalid_budget', message: String } })
  }
  t.equal((await db.sql`select count(*)::int as n from budgets`)[0].n, 0, 'nothing written')
  const del = await call('DELETE', '/admin/v1/budgets/users/nobody')
  t.equal(del.status, 404)
})

t.test('admin API: set, read, delete; limits are exact decimals', async (t) => {
  const put = await call('PUT', '/admin/v1/budgets/users/alice%40example.com', { limit_usd: '20.10', period: 'month' })
  t.equal(put.status, 200)
  t.match(put.body, { scope: 'user', user_id: 'alice@example.com', limit_usd: '20.1', period: 'month', spent_usd: '0', reserved_usd: '0', remaining_usd: '20.1', source: 'api' })
  const next = new Date()
  t.equal(put.body.resets_at, new Date(Date.UTC(next.getUTCFullYear(), next.getUTCMonth() + 1, 1)).toISOString())
  t.equal((await call('PUT', '/admin/v1/budgets/default-user', { limit_usd: 3.3, period: 'week' })).status, 200)
  t.equal((await call('PUT', '/admin/v1/budgets/organization', { limit_usd: '1000', period: 'total' })).status, 200)
  const [row] = await db.sql`select limit_usd::text as l from budgets where scope = 'default-user'`
  t.equal(row.l, '3.3', 'a number arrives as its exact decimal')
  const list = await call('GET', '/admin/v1/budgets')
  t.equal(list.status, 200)
  t.same(list.body.data.map((b: any) => [b.scope, b.user_id, b.limit_usd, b.period]), [
    ['default-user', null, '3.3', 'week'], ['organization', null, '1000', 'total'], ['user', 'alice@example.com', '20.1', 'month']])
  t.equal(list.body.data[1].resets_at, null, 'a total budget never resets')
  const monday = new Date(list.body.data[0].resets_at)
  t.equal(monday.getUTCDay(), 1, 'weeks end on Monday 00:00 UTC')
  const bob = await call('GET', '/admin/v1/budgets/users/bob')
  t.same(bob.body.data.map((b: any) => [b.scope, b.applies]), [['default-user', true], ['organization', true]], 'bob has only the default')
  const alice = await call('GET', '/admin/v1/budgets/users/alice%40example.com')
  t.same(alice.body.data.map((b: any) => [b.scope, b.applies]), [['default-user', false], ['organization', true], ['user', true]])
  for (const p of ['users/alice%40example.com', 'default-user', 'organization']) t.equal((await call('DELETE', `/admin/v1/budgets/${p}`)).status, 200, p)
  t.same((await call('GET', '/admin/v1/budgets')).body.data, [])
})

t.test('a request that does not fit: 402 before any byte, nothing upstream, a row with no cost', async (t) => {
  await call('PUT', '/admin/v1/budgets/users/carol', { limit_usd: '0.0001', period: 'month' })
  // Spend until refused by settled spend alone: each probe waits until no reservation is held
  // (the ledger has written the previous request's row), since a 402 caused by the previous
  // request's reservation would let the next request through once that settles lower.
  await rowsSoon(async () => {
    await rowsSoon(async () => (await db.sql`select 1 from budget_reservations limit 1`).length === 0 ? [1] : [])
    const r = await chat(s.url, 'carol')
    await r.body.dump()
    return r.statusCode === 402 ? [1] : []
  })
  const before = fake.requests.length
  const res = await chat(s.url, 'carol', { stream: true })
  t.equal(res.statusCode, 402)
  t.match(res.headers['content-type'], /application\/json/, 'an error body, not a stream')
  const text = await res.body.text()
  const body = JSON.parse(text)
  t.same(Object.keys(body.error), ['message', 'type', 'code', 'param'])
  t.same({ ...body.error, message: '' }, { message: '', type: 'insufficient_quota', code: 'budget_exceeded', param: null })
  const next = new Date()
  const resets = new Date(Date.UTC(next.getUTCFullYear(), next.getUTCMonth() + 1, 1)).toISOString().slice(0, 16).replace('T', ' ')
  t.match(body.error.message, new RegExp(`^This request could cost up to \\$0\\.0\\d+, and \\$0\\.0000\\d+ of your monthly budget of \\$0\\.0001 is left\\. Ask for a shorter answer \\(a smaller max_tokens\\) or send a shorter conversation\\. It resets on ${resets} UTC\\.$`))
  t.equal(fake.requests.length, before, 'nothing reached OpenRouter')
  const rows = await rowsSoon(() => db.sql`select * from usage_events where user_id = 'carol' and streamed`)
  t.equal(rows.length, 1)
  t.match(rows[0], { outcome: 'budget_exceeded', status: 402, cost_usd: null, billed_cost_usd: null, generation_id: null })
  t.equal(rows[0].error_message, body.error.message, 'the operator sees what the user saw')
})

t.test('the official openai client reads the 402 as an APIError with the message intact', async (t) => {
  const client = new OpenAI({ apiKey: 'unused', baseURL: `${s.url}/v1`, maxRetries: 0, defaultHeaders: { 'x-openwebui-user-id': 'carol' } })
  const err = await client.chat.completions.create({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], stream: true }).then(() => null, (e: unknown) => e)
  t.ok(err instanceof APIError, 'an APIError')
  const e = err as APIError
  t.equal(e.status, 402)
  t.equal(e.code, 'budget_exceeded')
  t.equal(e.type, 'insufficient_quota')
  t.match(e.message, /^402 This request could cost up to \$0\.0\d+, and \$0\.0000\d+ of your monthly budget of \$0\.0001 is left\. .* It resets on \d{4}-\d\d-01 00:00 UTC\.$/)
})

t.test('spend settles exactly when the record is written; the reservation is released', async (t) => {
  await call('PUT', '/admin/v1/budgets/organization', { limit_usd: '100', period: 'month' })
  await call('PUT', '/admin/v1/budgets/users/dave', { limit_usd: '1', period: 'day' })
  for (let i = 0; i < 5; i++) {
    const r = await chat(s.url, 'dave', { stream: i % 2 === 0 })
    t.equal(r.statusCode, 200)
    await r.body.dump()
  }
  await rowsSoon(async () => {
    const c = await counters('dave')
    return c.length === 2 && c.every((x) => same(x.reserved, '0')) && same(c[1].spent, await billed('dave')) ? c : []
  })
  const c = await counters('dave')
  const total = await billed('dave')
  t.not(total, '0')
  t.ok(same(c.find((x) => x.scope === 'user')!.spent, total), `user counter == sum of billed_cost_usd (${total})`)
  t.ok(c.every((x) => same(x.reserved, '0')), 'nothing left reserved')
  t.equal((await db.sql`select count(*)::int as n from budget_reservations`)[0].n, 0)
  const dave = await call('GET', '/admin/v1/budgets/users/dave')
  const own = dave.body.data.find((b: any) => b.scope === 'user')
  t.ok(same(own.spent_usd, total), `the admin API reads the same spend (${own.spent_usd} vs ${total})`)
  t.equal(sumDecimals([own.spent_usd, own.remaining_usd]), '1', 'spent + remaining == limit')
})

t.test('a client abort mid-stream settles to what OpenRouter charged', async (t) => {
  await call('PUT', '/admin/v1/budgets/users/erin', { limit_usd: '1', period: 'month' })
  const res = await chat(s.url, 'erin', { model: 'fake/slow', stream: true })
  // read a few events, then hang up
  let seen = 0
  await new Promise<void>((resolve) => {
    res.body.on('error', () => {}) // our own hang-up
    res.body.on('data', () => { if (++seen === 3) { res.body.destroy(); resolve() } })
  })
  const rows = await rowsSoon(() => db.sql`select outcome, cost_usd::text as cost, billed_cost_usd::text as billed, generation_id from usage_events where user_id = 'erin' and billed_cost_usd is not null`, 15_000)
  t.equal(rows.length, 1)
  t.equal(rows[0].outcome, 'client_aborted')
  const g = fake.generations.get(rows[0].generation_id)!
  t.ok(g.cancelled, 'OpenRouter saw the abort')
  t.equal(sumDecimals([rows[0].cost]), sumDecimals([g.cost]), 'the row holds what OpenRouter charged')
  const c = await rowsSoon(async () => (await counters('erin')).filter((x) => x.scope === 'user' && same(x.reserved, '0') && same(x.spent, rows[0].billed)))
  t.equal(c.length, 1, 'the counter holds exactly the billed charge, nothing reserved')
})

t.test('an organization refusal names the organization; BUDGET_EXCEEDED_MESSAGE fills placeholders', async (t) => {
  const db2 = await createTestDb({ migrated: true })
  const s2 = await startSidecar(baseEnv(fake, db2.url, {
    ORG_BUDGET_USD: '0', ORG_BUDGET_PERIOD: 'day',
    BUDGET_EXCEEDED_MESSAGE: 'Blocked: {scope} {period} limit {limit}, spent {spent}, resets {resets_at}. {reset} {unknown}',
  }))
  t.teardown(async () => { await s2.sidecar.stop('test end'); await db2.drop() })
  const [b] = await db2.sql`select scope, limit_usd::text as l, period, source from budgets`
  t.same({ ...b }, { scope: 'organization', l: '0', period: 'day', source: 'env' }, 'seeded from the environment')
  const res = await chat(s2.url, 'frank')
  t.equal(res.statusCode, 402)
  const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10)
  t.equal((await res.body.json() as any).error.message,
    `Blocked: The organization's daily limit $0.00, spent $0.00, resets ${tomorrow} 00:00 UTC. It resets on ${tomorrow} 00:00 UTC. {unknown}`)
})

t.test('the database wins over the environment once the admin API set a budget', async (t) => {
  const db2 = await createTestDb({ migrated: true })
  const env = baseEnv(fake, db2.url, { ORG_BUDGET_USD: '50', USER_BUDGET_USD: '5', USER_BUDGET_PERIOD: 'week', ADMIN_API_KEY: ADMIN_KEY })
  let s2 = await startSidecar(env)
  const rows = async () => (await db2.sql`select scope, limit_usd::text as l, period, source from budgets order by scope`).map((r) => ({ ...r }))
  t.same(await rows(), [{ scope: 'default-user', l: '5', period: 'week', source: 'env' }, { scope: 'organization', l: '50', period: 'month', source: 'env' }])
  const put = await request(s2.url + '/admin/v1/budgets/organization', { method: 'PUT', headers: admin, body: '{"limit_usd":"70","period":"day"}' })
  t.equal(put.statusCode, 200)
  await put.body.dump()
  const del = await request(s2.url + '/admin/v1/budgets/default-user', { method: 'DELETE', headers: admin })
  t.equal(del.statusCode, 200)
  await del.body.dump()
  await s2.sidecar.stop('restart')
  s2 = await startSidecar({ ...env, ORG_BUDGET_USD: '60' })
  t.teardown(async () => { await s2.sidecar.stop('test end'); await db2.drop() })
  t.same(await rows(), [{ scope: 'default-user', l: null, period: 'week', source: 'api' }, { scope: 'organization', l: '70', period: 'day', source: 'api' }],
    'neither the changed nor the deleted budget came back from the environment')
})

t.test('USER_RPM and USER_MAX_CONCURRENT: 429 with OpenAI\'s headers; other users unaffected', async (t) => {
  const db2 = await createTestDb({ migrated: true })
  const s2 = await startSidecar(baseEnv(fake, db2.url, { USER_RPM: '3', USER_MAX_CONCURRENT: '1' }))
  t.teardown(async () => { await s2.sidecar.stop('test end'); await db2.drop() })
  // concurrency: a slow stream holds the user's only slot
  const slow = await chat(s2.url, 'gina', { model: 'fake/slow', stream: true })
  t.equal(slow.statusCode, 200)
  const second = await chat(s2.url, 'gina')
  t.equal(second.statusCode, 429)
  t.match(await second.body.json(), { error: { type: 'rate_limit_exceeded', code: 'rate_limit_exceeded', message: /at a time/, param: null } })
  t.ok(Number(second.headers['retry-after']) >= 1, 'Retry-After in seconds')
  const other = await chat(s2.url, 'hank')
  t.equal(other.statusCode, 200, 'another user is served meanwhile')
  await other.body.dump()
  // The slot was shown held; the rest of the stream need not be paced (8 s at the fake's default).
  const paced = fake.slowEventMs
  fake.slowEventMs = 0
  t.teardown(() => { fake.slowEventMs = paced })
  await slow.body.dump()
  // requests per minute: the slot is free again once the stream's record is done
  // The window is the database clock's minute: four requests whose round began and ended in the
  // same minute all fell in it. A round that crossed a minute is run again by a fresh user (the
  // next round starts in a new minute and takes far less than one, so two rounds suffice).
  const minute = async () => (await db2.sql`select date_trunc('minute', clock_timestamp())::text as m`)[0].m as string
  let statuses: number[] = []
  let last
  let user = ''
  for (let round = 0; round < 2; round++) {
    user = round === 0 ? 'ivan' : 'ivan-again'
    statuses = []
    const began = await minute()
    for (let i = 0; i < 4; i++) {
      last = await chat(s2.url, user)
      statuses.push(last.statusCode)
      if (last.statusCode !== 429) await last.body.dump()
    }
    if (await minute() === began) break
  }
  t.same(statuses, [200, 200, 200, 429])
  t.equal(last!.headers['x-ratelimit-limit-requests'], '3')
  t.equal(last!.headers['x-ratelimit-remaining-requests'], '0')
  t.match(last!.headers['x-ratelimit-reset-requests'], /^\d+(\.\d+)?s$/)
  const retry = Number(last!.headers['retry-after'])
  t.ok(retry >= 1 && retry <= 60, 'retry within the minute')
  t.match(await last!.body.json(), { error: { code: 'rate_limit_exceeded', message: /3 per minute/ } })
  const [{ n }] = await db2.sql`select requests as n from rate_windows where user_id = ${user}`
  t.equal(n, 3, 'the shared window holds the admitted requests')
})

t.test('BUDGET_WARN_PERCENT: one warning per period, posted to ALERT_WEBHOOK_URL', async (t) => {
  const got: Array<Record<string, unknown>> = []
  let failFirst = true
  const hook = createServer((req: IncomingMessage, res) => {
    let b = ''
    req.on('data', (c) => { b += c }).on('end', () => {
      if (failFirst) { failFirst = false; res.writeHead(503).end(); return } // retried with backoff
      got.push(JSON.parse(b))
      res.writeHead(204).end()
    })
  })
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r))
  const db2 = await createTestDb({ migrated: true })
  const s2 = await startSidecar(baseEnv(fake, db2.url, {
    ORG_BUDGET_USD: '1000', USER_BUDGET_USD: '0.005', USER_BUDGET_PERIOD: 'day', BUDGET_WARN_PERCENT: '1',
    ALERT_WEBHOOK_URL: `http://127.0.0.1:${(hook.address() as AddressInfo).port}/alerts`,
  }))
  t.teardown(async () => { await s2.sidecar.stop('test end'); await db2.drop(); hook.close() })
  // Spend until the user's settled counter is past 1 % of $0.005 (the ledger settles spend when
  // it writes the rows, a batch at a time), then one more request: its admission sees it.
  for (let i = 0; i < 3; i++) { const r = await chat(s2.url, 'jill'); await r.body.dump() }
  await rowsSoon(() => db2.sql`select 1 from budget_counters where user_id = 'jill' and scope = 'user' and spent_usd >= 0.00005`, 15_000)
  { const r = await chat(s2.url, 'jill'); await r.body.dump() }
  const alerts = await rowsSoon(async () => got, 15_000)
  t.equal(alerts.length, 1, 'one warning')
  t.match(alerts[0], { scope: 'default-user', user: 'jill', limit_usd: '0.005', period: 'day', spent_usd: String, resets_at: String })
  for (let i = 0; i < 3; i++) { const r = await chat(s2.url, 'jill'); await r.body.dump() }
  t.equal(got.length, 1, 'not again this period')
  const [{ warned }] = await db2.sql`select warned from budget_counters where user_id = 'jill' and scope = 'user'`
  t.equal(warned, true)
  t.ok(s2.logs.text.includes('budget: warning threshold crossed'))
})

t.test('a Prometheus gauge of utilization per budget scope, not per user', async (t) => {
  await call('PUT', '/admin/v1/budgets/default-user', { limit_usd: '0.0002', period: 'month' })
  for (const u of ['kate', 'kate', 'liam']) { const r = await chat(s.url, u); t.equal(r.statusCode, 200); await r.body.dump() }
  const settledLiam = await rowsSoon(() => db.sql`select 1 from budget_counters where user_id = 'liam' and period = 'month' and spent_usd > 0 and reserved_usd = 0`)
  t.equal(settledLiam.length, 1, 'settlement turned the hold into spend: nothing stays reserved')
  // the default's most spent user (not one with a budget of their own) against $0.0002
  const [{ most }] = await db.sql`select max(c.spent_usd)::text as most from budget_counters c
    where c.scope = 'user' and c.period = 'month' and c.period_start = budget_period_start('month', now())
      and not exists (select 1 from budgets b where b.scope = 'user' and b.user_id = c.user_id and b.limit_usd is not null)`
  t.ok(Number(most) > 0)
  // Postgres is read in the background (every 5 s) and a scrape answers from that: scrape until
  // a read after the settlement shows, within the test's own timeout.
  let text = ''
  let org: RegExpExecArray | null = null
  let def: RegExpExecArray | null = null
  for (const until = Date.now() + 20_000; Date.now() < until;) {
    text = await (await request(s.url + '/metrics')).body.text()
    org = /^usage_proxy_budget_utilization_ratio\{scope="organization"\} (\S+)$/m.exec(text)
    def = /^usage_proxy_budget_utilization_ratio\{scope="default"\} (\S+)$/m.exec(text)
    if (org && def && Math.abs(Number(def[1]) - Number(most) / 0.0002) < 1e-9) break
    await new Promise((r) => setTimeout(r, 250))
  }
  t.ok(org && Number(org[1]) > 0 && Number(org[1]) < 0.01, `organization: ${org?.[1]}`)
  t.ok(def && Math.abs(Number(def[1]) - Number(most) / 0.0002) < 1e-9, `default: ${def?.[1]} (most spent user ${most})`)
  t.equal(text.match(/^usage_proxy_budget_utilization_ratio\{/gm)?.length, 2, 'two series, whatever the number of users')
})
