import t, { type Test } from 'tap'
import { request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon } from './support/db.js'
import { baseEnv, startSidecar } from './support/sidecar.js'
import { TcpRelay } from './support/tcp-relay.js'

// BUDGET_FAIL_MODE with Postgres cut: open serves and charges the spend once the record lands;
// closed answers 503 and sends nothing upstream.

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(5).start() })
t.teardown(() => fake.close())

function chat (base: string, user: string) {
  return request(base + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user },
    body: JSON.stringify({ model: 'fake/ok', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }),
  })
}

async function setup (t: Test, mode: 'open' | 'closed') {
  const db = await createTestDb({ migrated: true })
  const relay = new TcpRelay(db.port)
  await relay.reserve()
  await relay.open()
  const s = await startSidecar(baseEnv(fake, `${relay.url}/${db.name}`, {
    ORG_BUDGET_USD: '5', USER_BUDGET_USD: '1', BUDGET_FAIL_MODE: mode, BUDGET_DB_TIMEOUT_MS: '1500', USER_RPM: '1000',
  }))
  t.teardown(async () => { await relay.open(); await s.sidecar.stop('test end'); await relay.cut(); await db.drop() })
  const ok = await chat(s.url, 'before')
  t.equal(ok.statusCode, 200, 'served while Postgres is up')
  await ok.body.dump()
  await relay.cut()
  return { db, relay, s }
}

t.test('BUDGET_FAIL_MODE=open: served while Postgres is cut; the spend counts once the record is written', async (t) => {
  const { db, relay, s } = await setup(t, 'open')
  const before = fake.generations.size
  const res = await chat(s.url, 'olga')
  t.equal(res.statusCode, 200, 'served without a reservation')
  await res.body.dump()
  t.equal(fake.generations.size, before + 1)
  t.match(s.logs.text, /budgets: postgres unavailable for the admission/)
  await relay.open()
  const rows = await rowsSoon(() => db.sql`select billed_cost_usd::text as b from usage_events where user_id = 'olga'`, 15_000)
  t.equal(rows.length, 1, 'the journaled record landed')
  const counter = await rowsSoon(() => db.sql`select spent_usd::text as s from budget_counters where scope = 'user' and user_id = 'olga' and spent_usd > 0`)
  t.equal(sumDecimals([counter[0].s]), sumDecimals([rows[0].b]), 'and its spend is on the budget')
})

t.test('BUDGET_FAIL_MODE=closed: 503 with an OpenAI-style error, nothing upstream', async (t) => {
  const { s } = await setup(t, 'closed')
  const before = fake.requests.length
  const res = await chat(s.url, 'carl')
  t.equal(res.statusCode, 503)
  t.ok(Number(res.headers['retry-after']) > 0)
  t.match(await res.body.json(), { error: { type: 'service_unavailable', code: 'budget_unavailable', message: /cannot be checked/, param: null } })
  t.equal(fake.requests.length, before, 'nothing reached OpenRouter')
})
