import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// Requests made with an API key, through HTTP on a real database: the key lets them in next to
// PROXY_API_KEY, names their user (its own, or the key itself) and groups whatever headers say,
// lands on the row as api_key_id, shows in the usage report under its name, is held to its own
// rpm, and once revoked, expired or made up gets 401 with nothing billed.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const PROXY_KEY = 'proxy-key-for-the-chat-app'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter(9).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, PROXY_API_KEY: PROXY_KEY, API_KEYS_REFRESH_MS: '200' }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function makeKey (base: string, body: Record<string, unknown>): Promise<{ id: string, key: string, name: string }> {
  const res = await request(base + '/admin/v1/keys', { method: 'POST', headers: admin, body: JSON.stringify(body) })
  const made = await res.body.json() as any
  if (res.statusCode !== 201) throw new Error(`POST /admin/v1/keys: ${res.statusCode} ${JSON.stringify(made)}`)
  return made
}

async function chat (base: string, bearer: string, headers: Record<string, string> = {}, extra: Record<string, unknown> = {}) {
  const res = await request(base + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${bearer}`, ...headers },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10, ...extra }),
  })
  const text = await res.body.text()
  return { status: res.statusCode, headers: res.headers, body: text === '' ? null : JSON.parse(text) }
}

interface Row { user_id: string | null, api_key_id: string | null, groups: string[], outcome: string, cost: string | null }

async function rowsOf (keyId: string, n: number): Promise<Row[]> {
  const read = () => db.sql<Row[]>`select user_id, api_key_id, groups, outcome, cost_usd::text as cost from usage_events where api_key_id = ${keyId} order by created_at`
  const deadline = Date.now() + 7500
  for (;;) {
    const rows = await read()
    if (rows.length >= n || Date.now() > deadline) return [...rows]
    await new Promise((r) => setTimeout(r, 25))
  }
}

t.test('a key without a user: it is the user, named as the key, whatever the headers and body say', async (t) => {
  const k = await makeKey(s.url, { name: 'nightly-report', groups: ['finance', 'ops'] })
  const r = await chat(s.url, k.key, { 'x-openwebui-user-id': 'mallory', 'x-openwebui-user-name': 'Mallory', 'x-openwebui-user-groups': 'admins' }, { user: 'someone-else' })
  t.equal(r.status, 200)
  const [row] = await rowsOf(k.id, 1)
  t.same(row, { user_id: `key:${k.id}`, api_key_id: k.id, groups: ['finance', 'ops'], outcome: 'ok', cost: row.cost }, 'billed to the key, in its groups')
  t.ok(row.cost !== null, 'and billed')
  const [m] = await rowsSoon(() => db.sql`select user_name from user_mappings where user_id = ${`key:${k.id}`}`)
  t.equal(m?.user_name, 'nightly-report', 'the key user shows the key\'s name')
  const [mallory] = await db.sql`select count(*)::int as n from usage_events where user_id = 'mallory' or user_id = 'someone-else'`
  t.equal(mallory.n, 0, 'nobody else was billed')
  const upstream = fake.requests.at(-1)!
  t.equal(upstream.headers.authorization, 'Bearer sk-or-v1-test-key-0123456789', 'OpenRouter sees the organization\'s key, never the app\'s')
  t.notOk(upstream.body.includes(k.key), 'nor the key in the body')
})

t.test('a key with a user: billed to that user; a header naming someone else changes nothing', async (t) => {
  const k = await makeKey(s.url, { name: 'alice-laptop', user_id: 'alice' })
  t.equal((await chat(s.url, k.key, { 'x-openwebui-user-id': 'bob' })).status, 200)
  const [row] = await rowsOf(k.id, 1)
  t.equal(row.user_id, 'alice')
  t.equal(row.api_key_id, k.id)
  t.same(row.groups, [])
})

t.test('PROXY_API_KEY works as before: headers name the user, no key on the row', async (t) => {
  const r = await chat(s.url, PROXY_KEY, { 'x-openwebui-user-id': 'carol' })
  t.equal(r.status, 200)
  const [row] = await rowsSoon(() => db.sql<Row[]>`select user_id, api_key_id from usage_events where user_id = 'carol'`)
  t.same(row, { user_id: 'carol', api_key_id: null })
  t.equal((await chat(s.url, 'not-the-key')).status, 401, 'any other key is still refused')
})

t.test('unknown, malformed, revoked and expired keys: 401 in OpenAI\'s shape, nothing billed', async (t) => {
  const [{ n: before }] = await db.sql`select count(*)::int as n from usage_events`
  const made = `upk_${'A'.repeat(43)}`
  for (const [what, bearer] of [['unknown', made], ['malformed', 'upk_short'], ['empty after the prefix', 'upk_']]) {
    const r = await chat(s.url, bearer)
    t.equal(r.status, 401, what)
    t.match(r.body, { error: { type: 'authentication_error', code: 'invalid_api_key', message: /unknown API key/ } }, what)
  }
  const k = await makeKey(s.url, { name: 'soon-revoked' })
  t.equal((await chat(s.url, k.key)).status, 200)
  await rowsOf(k.id, 1)
  t.equal((await request(`${s.url}/admin/v1/keys/${k.id}`, { method: 'DELETE', headers: admin })).statusCode, 200)
  const revoked = await chat(s.url, k.key)
  t.equal(revoked.status, 401, 'revoked: refused at once on the replica that revoked it')
  t.match(revoked.body, { error: { code: 'invalid_api_key', message: /revoked/ } })
  // Expiry: a key that expires a moment from now works until then and never after.
  const expiresAt = Date.now() + 1500
  const soon = await makeKey(s.url, { name: 'short-lived', expires_at: new Date(expiresAt).toISOString() })
  const first = await chat(s.url, soon.key)
  t.equal(first.status, 200, 'works before it expires')
  // Asked again until refused (served meanwhile, it is billed as any); first waiting out the
  // time it has left, where asking back to back cost hundreds of billed requests.
  await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now())))
  let last = await chat(s.url, soon.key)
  while (last.status === 200) {
    await new Promise((r) => setTimeout(r, 10))
    last = await chat(s.url, soon.key)
  }
  t.equal(last.status, 401)
  t.match(last.body, { error: { code: 'invalid_api_key', message: /expired/ } })
  t.equal((await chat(s.url, soon.key)).status, 401, 'and stays refused')
  const served = (await rowsOf(soon.id, 1)).length
  // A refused request's row, had it one, would be in the ledger before its answer was sent.
  while ((s.sidecar.ledger()?.depth ?? 0) > 0) await new Promise((r) => setTimeout(r, 10))
  const [{ n: after }] = await db.sql`select count(*)::int as n from usage_events`
  const [{ n: okRows }] = await db.sql`select count(*)::int as n from usage_events where api_key_id in (${k.id}, ${soon.id})`
  t.equal(after - before, okRows, 'only the requests served have rows')
  t.ok(served >= 1)
})

t.test('the key is accepted as x-api-key on /messages, as PROXY_API_KEY is', async (t) => {
  const k = await makeKey(s.url, { name: 'anthropic-sdk' })
  const res = await request(s.url + '/v1/messages', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': k.key },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 }),
  })
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.equal((await rowsOf(k.id, 1)).length, 1)
})

t.test('GET /v1/models with a key is served', async (t) => {
  const k = await makeKey(s.url, { name: 'catalogue-reader' })
  const res = await request(s.url + '/v1/models', { headers: { authorization: `Bearer ${k.key}` } })
  t.equal(res.statusCode, 200)
  t.match(await res.body.json(), { data: Array })
})

t.test('the key\'s rpm: 429 past it, naming the key; its user\'s other keys and PROXY_API_KEY unaffected', async (t) => {
  const k = await makeKey(s.url, { name: 'rate-limited', user_id: 'dave', rpm: 2 })
  const other = await makeKey(s.url, { name: 'dave-other', user_id: 'dave' })
  // The window is the database clock's minute: a round of three that crossed a minute is run again.
  const minute = async () => (await db.sql`select date_trunc('minute', clock_timestamp())::text as m`)[0].m as string
  let statuses: number[] = []
  let last
  for (let round = 0; round < 3; round++) {
    const began = await minute()
    statuses = []
    for (let i = 0; i < 3; i++) { last = await chat(s.url, k.key); statuses.push(last.status) }
    if (await minute() === began || statuses[0] === 429) break
  }
  t.same(statuses, [200, 200, 429])
  t.match(last!.body, { error: { type: 'rate_limit_exceeded', code: 'rate_limit_exceeded', message: /This API key .* 2 per minute/ } })
  t.equal(last!.headers['x-ratelimit-limit-requests'], '2')
  t.equal((await chat(s.url, other.key)).status, 200, 'another key of the same user is not held')
  t.equal((await chat(s.url, PROXY_KEY, { 'x-openwebui-user-id': 'dave' })).status, 200, 'nor the user through the chat app')
  const [w] = await db.sql`select organization_id from rate_windows where user_id = ${k.id}`
  t.equal(w.organization_id, 'mai_client_63a4eb6d:keys', 'the key\'s window is apart from every user\'s')
})

t.test('reports: the key shows like a user, under its name; last_used_at is written', async (t) => {
  const k = await makeKey(s.url, { name: 'report-visible' })
  t.equal((await chat(s.url, k.key)).status, 200)
  t.equal((await chat(s.url, k.key)).status, 200)
  await rowsOf(k.id, 2)
  const res = await request(`${s.url}/admin/v1/usage?group_by=user`, { headers: admin })
  const report = await res.body.json() as any
  const line = report.data.find((d: any) => d.user === `key:${k.id}`)
  t.match(line, { user: `key:${k.id}`, user_name: 'report-visible', requests: 2 })
  let used: string | null = null
  const deadline = Date.now() + 10_000
  while (used === null && Date.now() < deadline) {
    const r = await request(`${s.url}/admin/v1/keys/${k.id}`, { headers: admin })
    used = (await r.body.json() as any).last_used_at
    if (used === null) await new Promise((r) => setTimeout(r, 50))
  }
  t.match(used, /^\d{4}-\d{2}-\d{2}T/, 'last_used_at is set within the refresh interval')
})

t.test('without PROXY_API_KEY: any other key passes as before, a upk_ key is still checked and attributed', async (t) => {
  const db2 = await createTestDb({ migrated: true })
  const open = await startSidecar(baseEnv(fake, db2.url, { ADMIN_API_KEY: ADMIN_KEY }))
  t.teardown(async () => { await open.sidecar.stop('test end'); await db2.drop() })
  const k = await makeKey(open.url, { name: 'open-door' })
  t.equal((await chat(open.url, 'anything-at-all', { 'x-openwebui-user-id': 'erin' })).status, 200, 'a key that is not ours: accepted, as today')
  t.equal((await chat(open.url, k.key)).status, 200)
  const rows = await rowsSoon(() => db2.sql`select user_id from usage_events where api_key_id = ${k.id}`)
  t.same(rows.map((r) => r.user_id), [`key:${k.id}`], 'attributed to the key')
  t.equal((await chat(open.url, `upk_${'B'.repeat(43)}`)).status, 401, 'a made-up upk_ key is refused, not let in as anyone')
  await request(`${open.url}/admin/v1/keys/${k.id}`, { method: 'DELETE', headers: admin }).then((r) => r.body.dump())
  t.equal((await chat(open.url, k.key)).status, 401, 'a revoked key does not fall back to "any key"')
})
