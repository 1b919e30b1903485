import t from 'tap'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, type Started } from './support/sidecar.js'
import { ORG, seedLedger } from './support/seed.js'
import { createSelfService } from '../src/proxy/self-service.js'
import { formatUsd } from '../src/lib/decimal.js'
import { createLogger } from '../src/lib/log.js'

// The virtual model: listed next to OpenRouter's models, answered by the sidecar itself in the
// exact chat-completions shape, for the identified user, without calling OpenRouter or billing.

const MODEL = 'usage-proxy/my-usage'
const ANNA = { 'x-openwebui-user-id': 'u-anna', 'x-openwebui-user-name': 'Anna', 'content-type': 'application/json' }
let fake: FakeOpenRouter
let db: TestDb
let on: Started
let off: Started
let custom: Started

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  on = await startSidecar(baseEnv(fake, db.url))
  off = await startSidecar(baseEnv(fake, db.url, { SELF_SERVICE_MODEL: 'off' }))
  custom = await startSidecar(baseEnv(fake, db.url, { SELF_SERVICE_MODEL: 'acme/usage', SELF_SERVICE_MODEL_NAME: 'Acme usage' }))
  const now = new Date()
  const monthStart = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().slice(0, 10)
  await seedLedger(db.sql, { rows: 300, from: monthStart, days: now.getUTCDate() - 1 + now.getUTCHours() / 24 })
})
t.teardown(async () => {
  for (const s of [on, off, custom]) await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function chat (base: string, body: Record<string, unknown>, headers: Record<string, string> = ANNA) {
  const res = await request(`${base}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify(body) })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}

async function expectedFor (user: string) {
  const [r] = await db.sql<[{ billed: string, requests: number, today: number }]>`
    select coalesce(sum(billed_cost_usd), 0)::text as billed, count(*)::int as requests,
           count(*) filter (where created_at >= date_trunc('day', now() at time zone 'UTC') at time zone 'UTC')::int as today
    from usage_events where user_id = ${user}
      and created_at >= date_trunc('month', now() at time zone 'UTC') at time zone 'UTC'`
  return r
}

t.test('GET /v1/models lists the virtual model after OpenRouter\'s', async (t) => {
  const list = await (await request(`${on.url}/v1/models`)).body.json() as { data: Array<{ id: string, name: string, pricing: Record<string, string> }> }
  t.same(list.data.map((m) => m.id), [...fake.models.map((m) => m.id), MODEL])
  t.equal(list.data.at(-1)!.name, 'My usage')
  t.equal(list.data.at(-1)!.pricing.prompt, '0')
  const hidden = await (await request(`${off.url}/v1/models`)).body.json() as { data: Array<{ id: string }> }
  t.same(hidden.data.map((m) => m.id), fake.models.map((m) => m.id), 'SELF_SERVICE_MODEL=off hides it')
  const renamed = await (await request(`${custom.url}/api/v1/models`)).body.json() as { data: Array<{ id: string, name: string }> }
  t.same(renamed.data.at(-1), { ...renamed.data.at(-1), id: 'acme/usage', name: 'Acme usage' })
})

t.test('a chat answers the user\'s own usage, in the chat-completions shape, without OpenRouter', async (t) => {
  const before = fake.requests.length
  const r = await chat(on.url, { model: MODEL, messages: [{ role: 'user', content: 'How much did I use?' }] })
  t.equal(r.status, 200)
  t.match(r.headers['content-type'], /^application\/json/)
  const body = JSON.parse(r.text)
  t.equal(body.object, 'chat.completion')
  t.match(body.id, /^chatcmpl-/)
  t.equal(body.model, MODEL)
  t.type(body.created, 'number')
  t.equal(body.choices.length, 1)
  t.equal(body.choices[0].message.role, 'assistant')
  t.equal(body.choices[0].finish_reason, 'stop')
  t.same(body.usage, { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, cost: 0 })
  const content: string = body.choices[0].message.content
  const e = await expectedFor('u-anna')
  t.ok(e.requests > 0, 'anna has usage this month')
  t.match(content, `**${formatUsd(e.billed)}** over ${e.requests} requests`)
  t.match(content, `Requests today: ${e.today}`)
  t.match(content, 'Budget: none set for you')
  t.match(content, /Top models this month:\n1\. \S+: \$/)
  t.equal(fake.requests.length, before, 'OpenRouter was not called')
})

t.test('stream: SSE chunks with the same content, then [DONE]', async (t) => {
  const plain = JSON.parse((await chat(on.url, { model: MODEL, messages: [{ role: 'user', content: 'usage?' }] })).text).choices[0].message.content
  const r = await chat(on.url, { model: MODEL, stream: true, messages: [{ role: 'user', content: 'usage?' }] })
  t.equal(r.status, 200)
  t.match(r.headers['content-type'], /^text\/event-stream/)
  const events = r.text.split('\n\n').filter(Boolean)
  t.equal(events.at(-1), 'data: [DONE]')
  for (const e of events) t.match(e, /^data: /)
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)))
  for (const c of chunks) { t.equal(c.object, 'chat.completion.chunk'); t.equal(c.model, MODEL); t.equal(c.id, chunks[0].id) }
  t.equal(chunks[0].choices[0].delta.role, 'assistant')
  t.equal(chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''), plain)
  t.equal(chunks.at(-2).choices[0].finish_reason, 'stop')
  t.same(chunks.at(-1).choices, [])
  t.equal(chunks.at(-1).usage.total_tokens, 0)
})

t.test('nothing is billed: the next real request is recorded, the virtual ones never', async (t) => {
  const [{ n: before }] = await db.sql<[{ n: number }]>`select count(*)::int as n from usage_events`
  await chat(on.url, { model: MODEL, messages: [{ role: 'user', content: 'usage?' }] })
  const real = await chat(on.url, { model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }] })
  t.equal(real.status, 200)
  // The ledger writes in order: once the real row is in, a row for the virtual answer would be too.
  t.equal(await settle(on.sidecar, db.sql, before + 1), before + 1)
  const rows = await db.sql`select model from usage_events where model = ${MODEL}`
  t.equal(rows.length, 0)
})

t.test('no identity: the answer says so', async (t) => {
  const r = await chat(on.url, { model: MODEL, messages: [{ role: 'user', content: 'usage?' }] }, { 'content-type': 'application/json' })
  t.match(JSON.parse(r.text).choices[0].message.content, /cannot tell who you are/)
})

t.test('Open WebUI\'s background tasks get a small JSON answer', async (t) => {
  const r = await chat(on.url, { model: MODEL, stream: false, messages: [{ role: 'user', content: '### Task:\nGenerate a concise title...' }] })
  const answer = JSON.parse(JSON.parse(r.text).choices[0].message.content)
  t.equal(answer.title, 'My usage')
  t.ok(Array.isArray(answer.tags))
  const parts = await chat(on.url, { model: MODEL, messages: [{ role: 'user', content: [{ type: 'text', text: '### Task: tags' }] }] })
  t.match(JSON.parse(parts.text).choices[0].message.content, /"tags"/)
  const sys = await chat(on.url, { model: MODEL, messages: [{ role: 'system', content: '### Task: x' }] })
  t.match(JSON.parse(sys.text).choices[0].message.content, /Your usage/, 'only a user turn can be a task')
})

t.test('with SELF_SERVICE_MODEL=off the model id is just forwarded', async (t) => {
  const before = fake.requests.length
  await chat(off.url, { model: MODEL, messages: [{ role: 'user', content: 'hi' }] })
  t.equal(fake.requests.length, before + 1)
  const r = await chat(custom.url, { model: 'acme/usage', messages: [{ role: 'user', content: 'usage?' }] })
  t.match(JSON.parse(r.text).choices[0].message.content, /Your usage in/)
})

t.test('failures answer that request alone', async (t) => {
  const log = createLogger('silent')
  let upstream: (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => void = (_q, s) => s.end()
  const up: Server = createServer((q, s) => upstream(q, s))
  await new Promise<void>((r) => up.listen(0, '127.0.0.1', r))
  const upUrl = `http://127.0.0.1:${(up.address() as AddressInfo).port}`
  const svc = createSelfService({ model: MODEL, name: 'x', modelsUrl: `${upUrl}/models`, headers: { apiKey: 'k', appUrl: undefined, appTitle: 't', identityHeaders: new Set() }, log, summary: () => Promise.reject(new Error('db down')) })
  const dead = createSelfService({ model: MODEL, name: 'x', modelsUrl: 'http://127.0.0.1:1/models', headers: { apiKey: 'k', appUrl: undefined, appTitle: 't', identityHeaders: new Set() }, log, summary: () => Promise.resolve('') })
  const front = createServer((req, res) => {
    if (req.url === '/chat') svc.answer(res, { model: MODEL }, { userId: 'u', name: null, email: null, role: null, chatId: null, source: 'headers', groups: [], apiKey: null }, 'x')
    else if (req.url === '/dead') dead.listModels(req, res, '')
    else svc.listModels(req, res, '')
  })
  await new Promise<void>((r) => front.listen(0, '127.0.0.1', r))
  const base = `http://127.0.0.1:${(front.address() as AddressInfo).port}`
  try {
    const r = await request(`${base}/chat`)
    t.equal(r.statusCode, 503)
    t.equal(((await r.body.json()) as { error: { code: string } }).error.code, 'usage_unavailable')
    upstream = (_q, s) => { s.writeHead(401, { 'content-type': 'application/json' }); s.end('{"error":{"code":401,"message":"No auth"}}') }
    const err = await request(`${base}/models`)
    t.equal(err.statusCode, 401, 'an upstream error passes through as it came')
    t.equal(await err.body.text(), '{"error":{"code":401,"message":"No auth"}}')
    upstream = (_q, s) => { s.end('not json') }
    const junk = await request(`${base}/models`)
    t.equal(await junk.body.text(), 'not json')
    const gone = await request(`${base}/dead`)
    t.equal(gone.statusCode, 502)
    await gone.body.dump()
  } finally {
    front.close()
    up.close()
  }
})

t.test('the organization row exists for the seeded ledger', async (t) => {
  const [o] = await db.sql`select id from organizations where id = ${ORG}`
  t.equal(o.id, ORG)
})

t.test('with a budget, the answer shows the limit, what is left and when it resets', async (t) => {
  const { myUsageSummary } = await import('../src/usage/reports/my-usage.js')
  const { externalUserId } = await import('../src/identity/external-id.js')
  const text = await myUsageSummary(db.sql, {
    organizationId: ORG, userId: 'u-anna', externalUserId: externalUserId(ORG, 'u-anna'),
    budgetFor: async (id) => id === 'u-anna' ? { limit_usd: '10', used_usd: '2.5', remaining_usd: '7.5', period: 'month', resets_at: '2026-12-01T00:00:00.000Z' } : null,
  })
  t.match(text, 'Budget: $10.00 per month, $2.50 used, **$7.50 left**; resets 2026-12-01 00:00 UTC')
  const none = await myUsageSummary(db.sql, { organizationId: ORG, userId: 'u-new', externalUserId: externalUserId(ORG, 'u-new'), budgetFor: async () => null })
  t.match(none, 'over 0 requests')
  t.notMatch(none, 'Top models', 'no models without requests')
})
