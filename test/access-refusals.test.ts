import t from 'tap'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { LogSink, baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { start } from '../src/main.js'
import { createLogger } from '../src/lib/log.js'
import { verifyRollups } from '../src/usage/reports/verify.js'
import type { Sql } from '../src/db/connect.js'
import { ROWS_PER_MINUTE } from '../src/budgets/refusal-rows.js'

// Who was blocked, and why: a 402 (budget) and a 429 (rate limit) leave an access line with the
// app's user id, the model and the outcome, and a row with no cost that counts toward no budget
// and keeps the rollups exact. /readyz's 503s while booting are not warnings.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter(13).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, USER_BUDGET_USD: '100', USER_MAX_CONCURRENT: '1', BUDGET_REFRESH_MS: '100' }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

const access = (logs: LogSink): Array<Record<string, any>> =>
  logs.text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((l) => l.msg === 'access')

async function until<T> (read: () => T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = read()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

function chat (user: string) {
  return request(s.url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 }),
  })
}

t.test('402 and 429: an access line with user, model and outcome, and a row with no cost that no budget counts', async (t) => {
  const put = await request(s.url + '/admin/v1/budgets/users/bob', {
    method: 'PUT', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ limit_usd: '0', period: 'month' }),
  })
  t.equal(put.statusCode, 200)
  await put.body.dump()
  const refused = await chat('bob')
  t.equal(refused.statusCode, 402)
  await refused.body.dump()

  // gina's one slot (USER_MAX_CONCURRENT=1) is held by an answer paused upstream; a burst of her
  // requests meanwhile is refused, each recorded.
  fake.holdAt = 'headers'
  const held = chat('gina')
  await until(() => fake.held === 1 ? true : undefined, 'the first request to be held upstream')
  const BURST = 25
  const burst = await Promise.all(Array.from({ length: BURST }, async () => { const r = await chat('gina'); await r.body.dump(); return r.statusCode }))
  t.same(new Set(burst), new Set([429]), 'every request past the slot is a 429')
  fake.release()
  const ok = await held
  t.equal(ok.statusCode, 200)
  await ok.body.dump()

  const lines = await until(() => { const l = access(s.logs); return l.filter((x) => x.status === 429).length === BURST && l.some((x) => x.status === 200 && x.user === 'gina') ? l : undefined }, 'every access line')
  t.match(lines.find((l) => l.status === 402), { route: 'metered', user: 'bob', externalUser: /^mai_client_63a4eb6d_user_[0-9a-f]{16}$/, model: 'fake/ok', outcome: 'budget_exceeded' })
  for (const l of lines.filter((x) => x.status === 429)) {
    t.match(l, { route: 'metered', user: 'gina', externalUser: /^mai_client_63a4eb6d_user_[0-9a-f]{16}$/, model: 'fake/ok', outcome: 'rate_limited' })
  }
  t.equal(lines.filter((l) => l.status === 429 || l.status === 402).length, BURST + 1, 'one line per refusal, none twice')

  const limited = await rowsSoon(async () => {
    const r = await db.sql`select status, outcome, cost_usd, billed_cost_usd, usage_source, model, external_user_id, error_message, latency_ms::text as latency
                             from usage_events where user_id = 'gina' and outcome = 'rate_limited'`
    return r.length === BURST ? r : []
  }, 15_000)
  t.equal(limited.length, BURST, 'a row for every 429: an operator can see who was blocked')
  t.match(limited[0], { status: 429, outcome: 'rate_limited', cost_usd: null, billed_cost_usd: null, usage_source: 'none', model: 'fake/ok', external_user_id: /^mai_client_/, error_message: /at a time/, latency: '0.000' })
  const [bob] = await rowsSoon(() => db.sql`select status, outcome, cost_usd from usage_events where user_id = 'bob'`)
  t.match(bob, { status: 402, outcome: 'budget_exceeded', cost_usd: null })

  // No budget counts a refusal: gina's counter holds exactly her one answered request's cost.
  const [{ billed }] = await rowsSoon(() => db.sql`select billed_cost_usd::text as billed from usage_events where user_id = 'gina' and outcome = 'ok' and billed_cost_usd is not null`)
  const [counter] = await rowsSoon(() => db.sql`select spent_usd::text as spent from budget_counters where scope = 'user' and user_id = 'gina' and period = 'month' and reserved_usd = 0`)
  t.equal(sumDecimals([counter.spent]), sumDecimals([billed]), 'spent is the answered request\'s billed cost, to the last digit')

  // The rollups stay exact with the refusals in them.
  const v = await verifyRollups(db.sql as unknown as Sql)
  t.same(v.differences, [], 'usage-proxy verify finds no difference')
  const [rolled] = await db.sql`select coalesce(sum(requests), 0)::int as requests, coalesce(sum(failed_or_aborted), 0)::int as refused
                                   from usage_daily_totals where user_id = 'gina'`
  t.same(rolled, { requests: BURST + 1, refused: BURST }, 'the rollups count them as the rows do: requests that did not end ok')

  const metrics = await (await request(s.url + '/metrics')).body.text()
  t.match(metrics, new RegExp(`^usage_proxy_outcomes_total\\{outcome="rate_limited"\\} ${BURST}$`, 'm'))
  t.match(metrics, /^usage_proxy_outcomes_total\{outcome="budget_exceeded"\} 1$/m)
  t.match(metrics, /^usage_proxy_upstream_latency_seconds_count\{endpoint="chat\/completions",streamed="false"\} 1$/m, 'a refusal has no upstream latency')
})

t.test('a flood of 429s: every one answered and logged, at most ROWS_PER_MINUTE rows a minute for the user', async (t) => {
  fake.holdAt = 'headers'
  const held = chat('hank')
  await until(() => fake.held === 1 ? true : undefined, 'hank\'s first request to be held upstream')
  const FLOOD = 2 * ROWS_PER_MINUTE + 30
  const codes: number[] = []
  for (let i = 0; i < FLOOD; i += 30) {
    codes.push(...await Promise.all(Array.from({ length: Math.min(30, FLOOD - i) }, async () => { const r = await chat('hank'); await r.body.dump(); return r.statusCode })))
  }
  t.same(new Set(codes), new Set([429]), 'every request past the slot is refused')
  fake.release()
  const ok = await held
  t.equal(ok.statusCode, 200)
  await ok.body.dump()
  // The answered request is recorded after every refusal: once its row is in, so are theirs.
  await rowsSoon(() => db.sql`select 1 from usage_events where user_id = 'hank' and outcome = 'ok'`, 15_000)
  const [{ n }] = await db.sql<{ n: number }[]>`select count(*)::int as n from usage_events where user_id = 'hank' and outcome = 'rate_limited'`
  // The flood takes seconds: it lies in one minute, or across one minute's end.
  t.ok(n >= ROWS_PER_MINUTE && n <= 2 * ROWS_PER_MINUTE, `${n} rows for ${FLOOD} refusals`)
  const lines = await until(() => { const l = access(s.logs).filter((x) => x.user === 'hank' && x.status === 429); return l.length === FLOOD ? l : undefined }, 'an access line per refusal')
  t.equal(lines.length, FLOOD)
})

t.test('/readyz answers 503 while boot waits for the database: logged at debug, not as a warning', async (t) => {
  const srv = createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as AddressInfo).port
  await new Promise<void>((r) => srv.close(() => r()))
  const logs = new LogSink()
  const booting = await start({ ...baseEnv(fake, `postgres://postgres@127.0.0.1:${port}/none`), DB_CONNECT_RETRY_MAX_MS: '200' }, createLogger('debug', logs))
  booting.ready.catch(() => {})
  t.teardown(() => booting.stop('test end'))
  for (let i = 0; i < 3; i++) {
    const r = await request(`http://127.0.0.1:${booting.port}/readyz`)
    t.equal(r.statusCode, 503)
    await r.body.dump()
  }
  const chat = await request(`http://127.0.0.1:${booting.port}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  t.equal(chat.statusCode, 503)
  await chat.body.dump()
  const lines = await until(() => { const l = access(logs); return l.filter((x) => x.endpoint === '/readyz').length === 3 && l.some((x) => x.route === 'metered') ? l : undefined }, 'the probes\' lines')
  t.same(lines.filter((l) => l.endpoint === '/readyz').map((l) => l.level), [20, 20, 20], 'debug')
  t.equal(lines.find((l) => l.route === 'metered')?.level, 40, 'a chat request refused while not ready is still a warning')
})
