import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { ORG, USERS, seedLedger } from './support/seed.js'
import { parseCsv } from './support/csv.js'

// The usage API against a seeded ledger: every sum equals the database's to the last digit, in
// JSON and in CSV, and every bad parameter is a 400 naming it.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const AUTH = { authorization: `Bearer ${ADMIN_KEY}` }
const FROM = '2026-10-01'
const TO = '2026-11-01'
let fake: FakeOpenRouter
let db: TestDb
let on: Started

interface Raw { user_id: string | null, model: string, day: string, kind: string, outcome: string, cost: string | null, billed: string | null, prompt: number | null, created_at: string, event_id: string }
let raw: Raw[] = []

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }))
  // October plus a few rows on each side of it, which must never be counted.
  await seedLedger(db.sql, { rows: 600, from: '2026-09-28', days: 38 })
  raw = await db.sql<Raw[]>`select user_id, model, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD') as day, kind, outcome,
    cost_usd::text as cost, billed_cost_usd::text as billed, prompt_tokens as prompt, created_at::text, event_id::text
    from usage_events where created_at >= ${FROM}::timestamptz and created_at < ${TO}::timestamptz`
})
t.teardown(async () => {
  await on?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function get (path: string, headers: Record<string, string> = AUTH) {
  const res = await request(on.url + path, { headers })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) }
}

const same = (a: string, b: string): boolean => sumDecimals([a]) === sumDecimals([b])
/** Every significant digit, no trailing zeros, no trailing '.', zero as "0". */
const EXACT = /^-?(0|[1-9]\d*)(\.\d*[1-9])?$/

function expectedBy (key: (r: Raw) => string | null): Map<string | null, { requests: number, cost: string, billed: string }> {
  const out = new Map<string | null, { requests: number, costs: string[], billed: string[] }>()
  for (const r of raw) {
    const k = key(r)
    const e = out.get(k) ?? { requests: 0, costs: [], billed: [] }
    e.requests++
    if (r.cost !== null) e.costs.push(r.cost)
    if (r.billed !== null) e.billed.push(r.billed)
    out.set(k, e)
  }
  return new Map([...out].map(([k, v]) => [k, { requests: v.requests, cost: sumDecimals(v.costs), billed: sumDecimals(v.billed) }]))
}

t.test('the seed covers the period and its edges', async (t) => {
  t.ok(raw.length > 400, `${raw.length} rows in October`)
  const [{ outside }] = await db.sql<[{ outside: number }]>`select count(*)::int as outside from usage_events where created_at < ${FROM}::timestamptz or created_at >= ${TO}::timestamptz`
  t.ok(outside > 0, 'rows outside the period exist')
})

for (const [groupBy, key] of [
  ['user', (r: Raw) => r.user_id],
  ['model', (r: Raw) => r.model],
  ['day', (r: Raw) => r.day],
  ['task', (r: Raw) => r.kind],
  ['outcome', (r: Raw) => r.outcome],
] as const) {
  t.test(`group_by=${groupBy}: every row and the totals equal the database, exactly`, async (t) => {
    const r = await get(`/admin/v1/usage?from=${FROM}&to=${TO}&group_by=${groupBy}`)
    t.equal(r.status, 200)
    const body = r.json()
    t.equal(body.group_by, groupBy)
    t.equal(body.from, FROM)
    t.equal(body.to, TO)
    const expected = expectedBy(key)
    t.equal(body.data.length, expected.size, 'one row per group')
    for (const row of body.data) {
      const e = expected.get(row[groupBy])
      t.ok(e, `group ${row[groupBy]} exists in the database`)
      t.equal(row.requests, e!.requests, `${row[groupBy]}: requests`)
      t.type(row.cost_usd, 'string')
      t.ok(same(row.cost_usd, e!.cost), `${row[groupBy]}: cost ${row.cost_usd} = ${e!.cost}`)
      t.ok(same(row.billed_cost_usd, e!.billed), `${row[groupBy]}: billed ${row.billed_cost_usd} = ${e!.billed}`)
      for (const c of ['cost_usd', 'billed_cost_usd', 'total_tokens']) t.match(row[c], EXACT, `${row[groupBy]}: ${c} ${row[c]} without trailing zeros`)
    }
    for (const c of ['cost_usd', 'billed_cost_usd', 'prompt_tokens']) t.match(body.totals[c], EXACT, `totals.${c} ${body.totals[c]} without trailing zeros`)
    t.equal(body.totals.requests, raw.length)
    t.ok(same(body.totals.billed_cost_usd, sumDecimals(raw.filter((x) => x.billed).map((x) => x.billed!))), 'totals.billed_cost_usd')
    t.ok(same(body.totals.billed_cost_usd, sumDecimals(body.data.map((x: { billed_cost_usd: string }) => x.billed_cost_usd))), 'totals = sum of rows')
    t.ok(same(body.totals.prompt_tokens, String(raw.reduce((s, x) => s + (x.prompt ?? 0), 0))), 'prompt tokens')
    if (groupBy === 'user') {
      const anna = body.data.find((x: { user: string }) => x.user === 'u-anna')
      t.equal(anna.user_name, 'Anna Müller')
      t.equal(anna.user_email, 'anna@acme.test')
      t.equal(anna.budget, null, 'no budgets module: no budget')
      const billed = body.data.map((x: { billed_cost_usd: string }) => Number(x.billed_cost_usd))
      t.same(billed, [...billed].sort((a, b) => b - a), 'largest spend first')
    }
    if (groupBy === 'day') t.same(body.data.map((x: { day: string }) => x.day), [...expected.keys()].sort(), 'days in order')
  })
}

t.test('user= narrows to one user', async (t) => {
  const body = (await get(`/admin/v1/usage?from=${FROM}&to=${TO}&group_by=model&user=u-bob`)).json()
  t.equal(body.user, 'u-bob')
  const bob = raw.filter((r) => r.user_id === 'u-bob')
  t.equal(body.totals.requests, bob.length)
  t.ok(same(body.totals.billed_cost_usd, sumDecimals(bob.filter((x) => x.billed).map((x) => x.billed!))))
  const nobody = (await get(`/admin/v1/usage?from=${FROM}&to=${TO}&user=u-nobody`)).json()
  t.same(nobody.data, [])
  t.equal(nobody.totals.requests, 0)
  t.equal(nobody.totals.billed_cost_usd, '0')
})

t.test('the organization by id and by name, for the page\'s header', async (t) => {
  const root = (await get('/admin/v1/')).json()
  t.equal(root.organization, ORG, 'the id, as before')
  t.equal(root.organization_name, 'Acme GmbH', 'ORGANIZATION_NAME')
  const usage = (await get(`/admin/v1/usage?from=${FROM}&to=${TO}&group_by=task`)).json()
  t.equal(usage.organization, ORG)
  t.equal(usage.organization_name, 'Acme GmbH')
})

t.test('the default period is the current UTC month', async (t) => {
  const body = (await get('/admin/v1/usage?group_by=day')).json()
  const now = new Date()
  t.equal(body.from, new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().slice(0, 10))
  t.equal(body.to, new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString().slice(0, 10))
})

t.test('CSV: RFC 4180, a header row, decimals trimmed as in the JSON, sums equal to sum(billed_cost_usd)', async (t) => {
  for (const [how, path, headers] of [
    ['format=csv', `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=user&format=csv`, AUTH],
    ['Accept: text/csv', `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=user`, { ...AUTH, accept: 'text/csv' }],
  ] as const) {
    const r = await get(path, headers)
    t.equal(r.status, 200, how)
    t.match(r.headers['content-type'], /^text\/csv/)
    t.match(r.headers['content-disposition'], /attachment; filename="usage-user-2026-10-01-2026-11-01\.csv"/)
    const [header, ...rows] = parseCsv(r.text)
    t.same(header, ['user', 'user_name', 'user_email', 'requests', 'prompt_tokens', 'completion_tokens', 'cached_tokens', 'reasoning_tokens', 'total_tokens', 'cost_usd', 'billed_cost_usd'])
    const json = (await get(`/admin/v1/usage?from=${FROM}&to=${TO}&group_by=user`)).json()
    t.same(rows.map((row) => row[header.indexOf('billed_cost_usd')]), json.data.map((x: { billed_cost_usd: string }) => x.billed_cost_usd), 'the same decimal text as the JSON')
    t.ok(rows.every((row) => EXACT.test(row[header.indexOf('cost_usd')]) && EXACT.test(row[header.indexOf('billed_cost_usd')])), 'no trailing zeros')
    t.ok(rows.some((row) => row[1] === 'Bob "the builder", Jr.'), 'quotes and commas survive')
    const [{ total }] = await db.sql<[{ total: string }]>`select sum(billed_cost_usd)::text as total from usage_events
      where created_at >= ${FROM}::timestamptz and created_at < ${TO}::timestamptz`
    t.ok(same(sumDecimals(rows.map((row) => row[header.indexOf('billed_cost_usd')])), total), `CSV total = sum(billed_cost_usd) = ${total}`)
  }
  const empty = await get('/admin/v1/usage?from=2020-01-01&to=2020-02-01&group_by=model&format=csv')
  t.equal(empty.text, 'model,requests,prompt_tokens,completion_tokens,cached_tokens,reasoning_tokens,total_tokens,cost_usd,billed_cost_usd\r\n', 'no rows: the header alone')
})

t.test('events: newest first, keyset pages that cover every row once', async (t) => {
  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  let lastTime = '9999'
  do {
    const body = (await get(`/admin/v1/events?from=${FROM}&to=${TO}&limit=97${cursor ? `&cursor=${cursor}` : ''}`)).json()
    pages++
    for (const e of body.data) {
      t.ok(e.created_at <= lastTime, 'newest first')
      lastTime = e.created_at
      seen.push(e.event_id)
    }
    t.equal(body.has_more, body.next_cursor !== null)
    cursor = body.next_cursor
  } while (cursor && pages < 100)
  t.equal(pages, Math.ceil(raw.length / 97))
  t.equal(seen.length, raw.length)
  t.same([...seen].sort(), raw.map((r) => r.event_id).sort(), 'every row exactly once')
})

t.test('events: filters, exact decimals, names, and CSV', async (t) => {
  const body = (await get(`/admin/v1/events?from=${FROM}&to=${TO}&user=u-chen&model=openai/gpt-4o&outcome=ok&limit=1000`)).json()
  const want = raw.filter((r) => r.user_id === 'u-chen' && r.model === 'openai/gpt-4o' && r.outcome === 'ok')
  t.equal(body.data.length, want.length)
  t.ok(want.length > 0)
  const byId = new Map(want.map((r) => [r.event_id, r]))
  for (const e of body.data) {
    const pg = byId.get(e.event_id)!.billed!
    t.ok(same(e.billed_cost_usd, pg), `billed ${e.billed_cost_usd} = Postgres' ${pg}`)
    t.match(e.billed_cost_usd, EXACT, 'every significant digit, no trailing zeros')
    t.equal(e.markup_percent, '12.5', 'the markup trimmed too')
    t.equal(e.user_name, '陈 晨')
  }
  const csv = await get(`/admin/v1/events?from=${FROM}&to=${TO}&outcome=client_aborted&limit=1000&format=csv`)
  const [header, ...rows] = parseCsv(csv.text)
  t.equal(header[0], 'event_id')
  t.equal(rows.length, raw.filter((r) => r.outcome === 'client_aborted').length)
  for (const c of ['cost_usd', 'billed_cost_usd', 'markup_percent']) {
    t.ok(rows.every((row) => row[header.indexOf(c)] === '' || EXACT.test(row[header.indexOf(c)])), `CSV ${c} without trailing zeros`)
  }
})

t.test('bad parameters: 400 with an OpenAI-style error naming the parameter', async (t) => {
  for (const [query, param] of [
    ['from=2026-13-01', 'from'], ['from=yesterday', 'from'], ['to=2026-02-30', 'to'], ['from=2026-10-02&to=2026-10-01', 'to'],
    ['from=2026-10-01&to=2026-10-01', 'to'], ['group_by=week', 'group_by'], ['format=xml', 'format'], ['user=', 'user'],
  ] as const) {
    const r = await get(`/admin/v1/usage?${query}`)
    t.equal(r.status, 400, query)
    const err = r.json().error
    t.equal(err.type, 'invalid_request_error')
    t.equal(err.code, 'invalid_parameter')
    t.match(err.message, param)
  }
  for (const [query, param] of [['limit=0', 'limit'], ['limit=1001', 'limit'], ['limit=ten', 'limit'], ['cursor=bm9wZQ', 'cursor'], ['outcome=', 'outcome']] as const) {
    const r = await get(`/admin/v1/events?${query}`)
    t.equal(r.status, 400, query)
    t.match(r.json().error.message, param)
  }
})

t.test('the usage API needs the admin key', async (t) => {
  t.equal((await get(`/admin/v1/usage?from=${FROM}&to=${TO}`, {})).status, 401)
  t.equal((await get('/admin/v1/events', { authorization: 'Bearer wrong' })).status, 401)
})

t.test('sign-in sets an HttpOnly SameSite=Strict cookie that opens the API; sign-out clears it', async (t) => {
  const wrong = await request(`${on.url}/admin/sign-in`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: 'wrong-key-0123456789' }) })
  t.equal(wrong.statusCode, 401)
  t.notOk(wrong.headers['set-cookie'])
  t.equal(((await wrong.body.json()) as { error: { code: string } }).error.code, 'invalid_admin_key')
  const junk = await request(`${on.url}/admin/sign-in`, { method: 'POST', body: 'not json' })
  t.equal(junk.statusCode, 401)
  await junk.body.dump()

  const ok = await request(`${on.url}/admin/sign-in`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key: ADMIN_KEY }) })
  t.equal(ok.statusCode, 204)
  await ok.body.dump()
  const setCookie = String(ok.headers['set-cookie'])
  t.match(setCookie, /^usage_proxy_admin=/)
  for (const attr of ['HttpOnly', 'SameSite=Strict', 'Path=/admin']) t.ok(setCookie.split('; ').includes(attr), attr)
  const cookie = setCookie.split(';')[0]
  const r = await get(`/admin/v1/usage?from=${FROM}&to=${TO}`, { cookie })
  t.equal(r.status, 200, 'the cookie opens the API')

  const form = await request(`${on.url}/admin/sign-in`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `key=${encodeURIComponent(ADMIN_KEY)}` })
  t.equal(form.statusCode, 303, 'a plain form post is redirected to the page')
  t.equal(form.headers.location, '/admin/')
  await form.body.dump()

  const out = await request(`${on.url}/admin/sign-out`, { method: 'POST', headers: { cookie } })
  t.equal(out.statusCode, 204)
  t.match(String(out.headers['set-cookie']), /^usage_proxy_admin=;.*Max-Age=0/)
  await out.body.dump()
  const outForm = await request(`${on.url}/admin/sign-out`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: '' })
  t.equal(outForm.statusCode, 303)
  await outForm.body.dump()
})

t.test('the page and its assets are served without a key, from this origin only', async (t) => {
  for (const path of ['/admin/', '/admin']) {
    const r = await get(path, {})
    t.equal(r.status, 200, path)
    t.match(r.headers['content-type'], /^text\/html/)
    t.match(r.headers['content-security-policy'], /default-src 'self'/)
    t.match(r.text, /<form[^>]*id="sign-in"/)
    t.notMatch(r.text, /https?:\/\//, 'nothing loaded from elsewhere')
  }
  const js = await get('/admin/assets/app.js', {})
  t.equal(js.status, 200)
  t.match(js.headers['content-type'], /javascript/)
  const money = await get('/admin/assets/money.js', {})
  t.equal(money.status, 200, 'the page\'s money rule is served with it')
  t.match(money.text, /usageProxyMoney/)
  t.equal((await get('/admin/assets/style.css', {})).status, 200)
  t.equal((await get('/admin/assets/nope.js', {})).status, 404)
  t.equal((await get('/admin/assets/index.html', {})).status, 401, 'only named assets are public')
})
