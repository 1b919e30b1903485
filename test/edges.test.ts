import t from 'tap'
import { request } from 'undici'
import { Readable } from 'node:stream'
import { connect, type Socket } from 'node:net'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { freePort } from './support/child.js'
import { signJwt } from './support/sign-jwt.js'
import { externalUserId } from '../src/identity/external-id.js'

let fake: FakeOpenRouter
let db: TestDb
let s: Started
const JWT_SECRET = 'shared-secret-with-open-webui-0123'
const PROXY_KEY = 'up-proxy-key-abcdef'
const headers = { authorization: `Bearer ${PROXY_KEY}`, 'content-type': 'application/json' }

t.before(async () => {
  fake = await new FakeOpenRouter(11).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, {
    PROXY_API_KEY: PROXY_KEY,
    FORWARD_USER_INFO_HEADER_JWT_SECRET: JWT_SECRET,
    UPSTREAM_HEADERS_TIMEOUT_MS: '500',
    UPSTREAM_BODY_TIMEOUT_MS: '500',
    MAX_BODY_BYTES: '2000',
    CLIENT_HEADERS_TIMEOUT_MS: '300',
    CLIENT_REQUEST_TIMEOUT_MS: '1500',
  }))
})
t.teardown(async () => { await s?.sidecar.stop(); await fake?.close(); await db?.drop() })

async function rows (where: (r: any) => boolean, n = 1): Promise<any[]> {
  for (let i = 0; i < 300; i++) {
    const all = (await db.sql`select * from usage_events order by created_at`).filter(where)
    if (all.length >= n) return all
    await new Promise((r) => setTimeout(r, 25))
  }
  return []
}

t.test('upstream silent before headers: 504 in OpenAI shape, outcome recorded', async (t) => {
  const res = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'fake/silent', messages: [], user: 'silent-user' }) })
  t.equal(res.statusCode, 504)
  t.match(await res.body.json(), { error: { type: 'upstream_error', code: 'upstream_timeout', message: String } })
  const [row] = await rows((r) => r.model === 'fake/silent')
  t.same([row?.outcome, row?.status, row?.cost_usd], ['upstream_timeout', 504, null])
})

t.test('upstream silent mid-stream: the client gets a clean end, the record says timeout, cost comes from /generation', async (t) => {
  const res = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'fake/hang', stream: true, messages: [], user: 'hang-user' }) })
  t.equal(res.statusCode, 200)
  const gen = String(res.headers['x-generation-id'])
  const text = await res.body.text()
  t.match(text, /OPENROUTER PROCESSING/, 'what arrived was passed on')
  fake.generations.get(gen)!.completedAt = Date.now()
  const [row] = await rows((r) => r.generation_id === gen)
  t.same([row?.outcome, row?.usage_source, row?.cost_usd?.toString()], ['upstream_timeout', 'generation', fake.generations.get(gen)!.cost])
})

t.test('OpenRouter unreachable: 502 in OpenAI shape', async (t) => {
  const port = await freePort()
  const other = await startSidecar(baseEnv(fake, db.url, { OPENROUTER_BASE_URL: `http://127.0.0.1:${port}/api/v1` }))
  t.teardown(() => other.sidecar.stop())
  const res = await request(`${other.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'x', messages: [], user: 'nowhere-user' }) })
  t.equal(res.statusCode, 502)
  t.match(await res.body.json(), { error: { code: 'upstream_unreachable' } })
  const [row] = await rows((r) => r.user_id === 'nowhere-user')
  t.equal(row?.outcome, 'upstream_unreachable')
  const models = await request(`${other.url}/v1/models`)
  t.equal(models.statusCode, 502, 'passthrough too')
  t.match(await models.body.json(), { error: { code: 'upstream_unreachable' } })
})

t.test('a body over MAX_BODY_BYTES: 413, nothing forwarded', async (t) => {
  const before = fake.requests.length
  const big = JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'x'.repeat(5000) }] })
  const res = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers, body: big })
  t.equal(res.statusCode, 413)
  t.match(await res.body.json(), { error: { code: 'body_too_large' } })
  const chunked = await request(`${s.url}/v1/chat/completions`, {
    method: 'POST', headers,
    body: Readable.from((function * () { for (let i = 0; i < 10; i++) yield Buffer.alloc(500, 0x20) })()),
  })
  t.equal(chunked.statusCode, 413, 'also without a content-length')
  await chunked.body.dump()
  t.equal(fake.requests.length, before)
})

t.test('slow or endless clients are cut off by server timeouts, nothing forwarded', async (t) => {
  const before = fake.requests.length
  const port = Number(new URL(s.url).port)
  const talk = (send: (sock: Socket) => void) => new Promise<{ text: string, ms: number }>((resolve) => {
    const started = Date.now()
    const sock = connect(port, '127.0.0.1', () => send(sock))
    let text = ''
    sock.on('data', (c) => { text += c })
    sock.on('close', () => resolve({ text, ms: Date.now() - started }))
    sock.on('error', () => {})
  })
  // Headers that never finish.
  const slowHeaders = await talk((sock) => sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n'))
  t.match(slowHeaders.text, /^HTTP\/1\.1 408/, 'headers timeout answers 408 and closes')
  // A body that trickles forever.
  const slowBody = await talk((sock) => {
    sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${PROXY_KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{`)
    const drip = setInterval(() => { if (!sock.destroyed) sock.write(' ') }, 100)
    sock.on('close', () => clearInterval(drip))
  })
  t.match(slowBody.text, /^HTTP\/1\.1 408/, 'request timeout answers 408 and closes')
  t.equal(fake.requests.length, before)
})

t.test('signed identity: a valid JWT names the user, a forged one is refused, plain headers are ignored', async (t) => {
  const now = Math.floor(Date.now() / 1000)
  const token = signJwt({ sub: 'jwt-user', name: 'Ünal', email: 'u@x', role: 'user', iss: 'open-webui', iat: now, exp: now + 300 }, JWT_SECRET)
  const ok = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { ...headers, 'x-openwebui-user-jwt': token }, body: JSON.stringify({ model: 'fake/ok', messages: [] }) })
  t.equal(ok.statusCode, 200)
  await ok.body.dump()
  t.equal(JSON.parse(fake.requests.at(-1)!.body).user, externalUserId('mai_client_63a4eb6d', 'jwt-user'))
  t.equal(fake.requests.at(-1)!.headers['x-openwebui-user-jwt'], undefined, 'the token stays here')
  const before = fake.requests.length
  const forged = signJwt({ sub: 'admin', iss: 'open-webui', iat: now, exp: now + 300 }, 'guessed-secret-guessed-secret')
  const bad = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { ...headers, 'x-openwebui-user-jwt': forged }, body: JSON.stringify({ model: 'fake/ok', messages: [] }) })
  t.equal(bad.statusCode, 401)
  t.match(await bad.body.json(), { error: { type: 'authentication_error', code: 'invalid_identity' } })
  t.equal(fake.requests.length, before, 'nothing forwarded')
  const plain = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { ...headers, 'x-openwebui-user-id': 'someone-else' }, body: JSON.stringify({ model: 'fake/ok', messages: [] }) })
  await plain.body.dump()
  t.equal(JSON.parse(fake.requests.at(-1)!.body).user, 'mai_client_63a4eb6d', 'a forgeable header does not bill another user')
  const bodyUser = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'fake/ok', messages: [], user: 'jwt-user' }) })
  await bodyUser.body.dump()
  t.equal(JSON.parse(fake.requests.at(-1)!.body).user, 'mai_client_63a4eb6d', 'nor does an unsigned body user once a secret is set')
})

t.test('a journal left by a crash, with a torn last line, is replayed at boot', async (t) => {
  const other = await createTestDb({ migrated: true })
  t.teardown(() => other.drop())
  const env = baseEnv(fake, other.url)
  const dir = join(env.DATA_DIR!, 'journal')
  mkdirSync(dir, { recursive: true })
  const rec = {
    eventId: '5a0d7a8e-7b59-4c3e-9d3c-1f0e8f4b2a11', generationId: 'gen-from-before-the-crash', organizationId: 'mai_client_63a4eb6d', userId: 'u', externalUserId: 'x',
    endpoint: 'chat/completions', model: 'm', servedModel: 'm', provider: 'p', streamed: true, status: 200, outcome: 'ok', finishReason: 'stop', errorMessage: null,
    usageSource: 'inline', promptTokens: 1, completionTokens: 2, totalTokens: 3, cachedTokens: null, reasoningTokens: null, costUsd: '0.000000000000000000001',
    upstreamCostUsd: null, isByok: false, markupPercent: '0', latencyMs: 5, ttfbMs: 1, chatId: null, kind: 'api', messageId: null, createdAt: new Date().toISOString(),
  }
  writeFileSync(join(dir, 'seg-000000000001.jsonl'), JSON.stringify({ k: 'r', r: rec }) + '\n' + '{"k":"r","r":{"eventId":"torn')
  const b = await startSidecar(env)
  t.teardown(() => b.sidecar.stop())
  let got: any[] = []
  for (let i = 0; i < 200 && got.length === 0; i++) {
    got = await other.sql`select cost_usd::text as c from usage_events where generation_id = 'gen-from-before-the-crash'`
    if (got.length === 0) await new Promise((r) => setTimeout(r, 25))
  }
  t.same(got, [{ c: '0.000000000000000000001' }])
  t.match(b.logs.text, /"tornLines":1/)
})
