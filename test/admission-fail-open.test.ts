import t from 'tap'
import { existsSync } from 'node:fs'
import { request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon } from './support/db.js'
import { baseEnv, startSidecar } from './support/sidecar.js'
import { TcpRelay } from './support/tcp-relay.js'

// Failing open is the documented last resort for a database that really does not answer
// (BUDGET_FAIL_MODE=open), and never a silent one: every request served without a spend check is
// counted in /metrics, logged (the first at once with its user and event id, the rest summed per
// second) and shown on the usage page; its spend lands on the budget with its record.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(11).start() })
t.teardown(() => fake.close())

function chat (base: string, user: string) {
  return request(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user },
    body: JSON.stringify({ model: 'fake/ok', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }),
  })
}

async function statusOf (p: ReturnType<typeof chat>): Promise<number> {
  const r = await p
  await r.body.dump()
  return r.statusCode
}

async function failedOpen (base: string): Promise<number> {
  const r = await request(`${base}/admin/v1/admissions`, { headers: admin })
  return ((await r.body.json()) as { failed_open: number }).failed_open
}

t.test('Postgres stops answering: every request served unchecked is counted in /metrics, logged and shown on the page; its spend lands later', async (t) => {
  const db = await createTestDb({ migrated: true })
  const relay = new TcpRelay(db.port)
  await relay.reserve()
  await relay.open()
  const s = await startSidecar(baseEnv(fake, `${relay.url}/${db.name}`, {
    ADMIN_API_KEY: ADMIN_KEY, SHUTDOWN_GRACE_MS: '200', ORG_BUDGET_USD: '5', USER_BUDGET_USD: '1', BUDGET_DB_TIMEOUT_MS: '1500', USER_RPM: '1000',
  }))
  t.teardown(async () => { relay.resume(); await s.sidecar.stop('test end'); await relay.cut(); await db.drop() })
  t.equal(await statusOf(chat(s.url, 'before')), 200)
  t.equal(await failedOpen(s.url), 0)
  relay.pause()
  const users = ['olga', 'olga', 'piet', 'quin', 'quin', 'quin']
  const served = await Promise.all(users.map((u) => statusOf(chat(s.url, u))))
  t.same(served, users.map(() => 200), 'BUDGET_FAIL_MODE=open serves while Postgres does not answer')
  // /metrics: the counter, read from memory.
  const m = await request(`${s.url}/metrics`)
  const text = await m.body.text()
  t.match(text, new RegExp(`^usage_proxy_budget_fail_open_total ${users.length}$`, 'm'), 'counted once per request in /metrics')
  t.match(text, /^usage_proxy_budget_fail_open_last_timestamp_seconds [1-9]/m)
  // The admin API the page reads.
  t.equal(await failedOpen(s.url), users.length)
  // The log: the first one named at once with its user and event id, the rest summed per second; none left out.
  const deadline = Date.now() + 5000
  const logged = (): { named: Array<{ user: string, eventId: string }>, summed: number } => {
    const lines = s.logs.text.split('\n').filter((l) => l.includes('WITHOUT a spend check')).map((l) => JSON.parse(l))
    const named = lines.filter((l) => l.eventId !== undefined && l.failedOpen === undefined)
    return { named, summed: lines.reduce((n, l) => n + (l.failedOpen ?? 0), 0) }
  }
  while (logged().named.length + logged().summed < users.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
  const { named, summed } = logged()
  t.equal(named.length + summed, users.length, `every one in the log: ${named.length} named, ${summed} summed`)
  t.ok(named.length >= 1)
  t.ok(users.includes(named[0].user), 'the first names its user')
  t.match(named[0].eventId, /^[0-9a-f-]{36}$/, 'and its event id')
  if (existsSync('/usr/bin/chromium')) {
    const { chromium } = await import('playwright-core')
    const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--no-first-run'] })
    try {
      const page = await browser.newPage()
      await page.goto(`${s.url}/admin/`)
      await page.fill('#key', ADMIN_KEY)
      await page.click('#sign-in button[type=submit]')
      const banner = page.locator('#admissions')
      await banner.waitFor({ state: 'visible', timeout: 10_000 })
      t.match(await banner.textContent(), `Spend limits were not checked for ${users.length} requests`, 'the usage page says so while the database is down')
    } finally {
      await browser.close()
    }
  } else {
    t.fail('/usr/bin/chromium is missing: the page could not be checked (apt-get install chromium)')
  }
  relay.resume()
  const rows = await rowsSoon(async () => {
    const r = await db.sql<Array<{ n: number }>>`select count(*)::int as n from usage_events where user_id in ('olga', 'piet', 'quin')`
    return r[0].n === users.length ? r : []
  }, 20_000)
  t.equal(rows.length, 1, 'the records landed once Postgres answered again')
  const billed = await db.sql<Array<{ b: string }>>`select billed_cost_usd::text as b from usage_events where user_id = 'quin'`
  const counter = await rowsSoon(() => db.sql<Array<{ s: string }>>`select spent_usd::text as s from budget_counters where scope = 'user' and user_id = 'quin' and spent_usd > 0`)
  t.equal(sumDecimals([counter[0].s]), sumDecimals(billed.map((r) => r.b)), 'and their spend is on the budget')
  t.equal(await statusOf(chat(s.url, 'after')), 200)
  t.equal(await failedOpen(s.url), users.length, 'a checked admission is not counted')
})
