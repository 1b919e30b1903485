import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { externalUserId } from '../src/identity/external-id.js'
import { identify, IdentityError, type IdentityOptions } from '../src/identity/identify.js'
import { MAX_TOKEN_BYTES } from '../src/identity/jwt.js'
import { signJwt } from './support/sign-jwt.js'
import { normalizeId } from '../src/identity/user-id.js'

// An id that names nobody (NUL, whitespace, control or format characters only) is no identity,
// wherever it arrives: the request is the organization's, or refused under REQUIRE_USER_IDENTITY;
// never a user with an empty id, who would escape per-user limits and read the organization's
// unattributed spend in "My usage".

const ORG = 'mai_client_63a4eb6d'
const SECRET = 'a-very-long-shared-secret-123'
const NOBODY = ['\u0000', '  ', '\u0007\u0000', '\t\r\n', '\u200b\ufeff', '\u00a0\u3000', '\u0000 \u0000']
const opts: IdentityOptions = {
  userIdHeader: 'x-openwebui-user-id', userNameHeader: 'x-openwebui-user-name', userEmailHeader: 'x-openwebui-user-email',
  userRoleHeader: 'x-openwebui-user-role', chatIdHeader: 'x-openwebui-chat-id', jwtHeader: 'x-openwebui-user-jwt',
  jwtSecret: undefined, trustBodyUser: true,
}
const now = () => Math.floor(Date.now() / 1000)

t.test('the rule: pgText, then nothing visible left is no id', async (t) => {
  for (const id of NOBODY) t.equal(normalizeId(id), null, JSON.stringify(id))
  t.equal(normalizeId('z\u0000ed'), 'zed')
  t.equal(normalizeId(' a '), ' a ', 'a visible id is kept as sent: external ids stay what they were')
  t.equal(normalizeId('\ud800'), '\ufffd')
  t.equal(normalizeId(null), null)
})

t.test('identify: body user, headers and JWT claims alike', async (t) => {
  for (const id of NOBODY) {
    const what = JSON.stringify(id)
    t.same(identify({}, id, opts), { userId: null, name: null, email: null, role: null, chatId: null, source: 'organization', groups: [], apiKey: null }, `body ${what}`)
    t.throws(() => identify({}, id, { ...opts, requireUserIdentity: true }), { name: 'Error', message: /names nobody.*REQUIRE_USER_IDENTITY/ }, `body ${what}, required`)
    t.equal(identify({ 'x-openwebui-user-id': id }, undefined, opts).userId, null, `header ${what}`)
    t.equal(identify({ 'x-openwebui-user-id': id }, 'body-user', opts).userId, 'body-user', `header ${what}: the body user is next`)
    t.throws(() => identify({ 'x-openwebui-user-id': id }, undefined, { ...opts, requireUserIdentity: true }), /x-openwebui-user-id names nobody/, `header ${what}, required`)
    const token = signJwt({ sub: id, iss: 'open-webui', iat: now(), exp: now() + 300 }, SECRET)
    t.throws(() => identify({ 'x-openwebui-user-jwt': token }, undefined, { ...opts, jwtSecret: SECRET }), /no subject/, `JWT sub ${what}: refused as an empty one is`)
  }
  t.ok(new IdentityError('x') instanceof Error)
  const token = signJwt({ sub: 'u\u00009', name: '\u0000', email: ' ', role: 'user\u0000', iss: 'open-webui', iat: now(), exp: now() + 300 }, SECRET)
  t.same(identify({ 'x-openwebui-user-jwt': token }, undefined, { ...opts, jwtSecret: SECRET }),
    { userId: 'u9', name: null, email: null, role: 'user', chatId: null, source: 'jwt', groups: [], apiKey: null }, 'claims normalized')
  t.same(identify({ 'x-openwebui-user-id': 'a\u0000b', 'x-openwebui-user-name': '%00', 'x-openwebui-user-role': '\u0007' }, undefined, opts),
    { userId: 'ab', name: null, email: null, role: null, chatId: null, source: 'headers', groups: [], apiKey: null }, 'headers normalized')
  t.equal(identify({}, 'z\u0000ed', opts).userId, 'zed')
})

t.test('a JWT is client bytes until its signature is checked: past MAX_TOKEN_BYTES it is not decoded', async (t) => {
  const claims = { sub: 'u1', iss: 'open-webui', iat: now(), exp: now() + 300 }
  const fits = signJwt({ ...claims, name: 'n'.repeat(MAX_TOKEN_BYTES / 2) }, SECRET)
  t.ok(fits.length <= MAX_TOKEN_BYTES)
  t.equal(identify({ 'x-openwebui-user-jwt': fits }, undefined, { ...opts, jwtSecret: SECRET }).userId, 'u1')
  const big = signJwt({ ...claims, name: 'n'.repeat(MAX_TOKEN_BYTES) }, SECRET)
  t.ok(big.length > MAX_TOKEN_BYTES)
  t.throws(() => identify({ 'x-openwebui-user-jwt': big }, undefined, { ...opts, jwtSecret: SECRET }), /token too large/, 'signed, but too large')
})

let fake: FakeOpenRouter
let db: TestDb
let open: Started
let strict: Started

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  open = await startSidecar(baseEnv(fake, db.url))
  strict = await startSidecar(baseEnv(fake, db.url, { REQUIRE_USER_IDENTITY: 'true' }))
})
t.teardown(async () => {
  for (const s of [open, strict]) await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function chat (base: string, body: Record<string, unknown>, headers: Record<string, string> = {}) {
  const res = await request(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}

t.test('REQUIRE_USER_IDENTITY refuses a user that names nobody, with a clear 401; nothing goes upstream', async (t) => {
  const posts = () => fake.requests.filter((r) => r.method === 'POST').length
  const before = posts()
  for (const user of ['\u0000', '  ', '\u0007\u0000']) {
    const r = await chat(strict.url, { model: 'fake/ok', user, messages: [{ role: 'user', content: 'hi' }] })
    t.equal(r.status, 401, JSON.stringify(user))
    t.match(JSON.parse(r.text), { error: { type: 'authentication_error', code: 'invalid_identity', message: /the "user" field names nobody.*REQUIRE_USER_IDENTITY/ } })
    const my = await chat(strict.url, { model: 'usage-proxy/my-usage', user, messages: [{ role: 'user', content: 'usage?' }] })
    t.equal(my.status, 401, `My usage, ${JSON.stringify(user)}`)
  }
  // HTTP carries no control characters in a header: what a header can hold that names nobody.
  for (const id of ['\u00a0', '\u00a0\t\u00a0']) {
    const h = await chat(strict.url, { model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }] }, { 'x-openwebui-user-id': id })
    t.equal(h.status, 401, `header ${JSON.stringify(id)}`)
    t.match(JSON.parse(h.text), { error: { code: 'invalid_identity', message: /x-openwebui-user-id names nobody/ } })
  }
  t.equal(posts(), before)
  t.equal((await chat(strict.url, { model: 'fake/ok', user: 'real-user', messages: [{ role: 'user', content: 'hi' }] })).status, 200, 'a real user passes')
})

t.test('otherwise the request is the organization\'s: no user row, the organization as OpenRouter user', async (t) => {
  const users = ['\u0000', '  ', '\u0007\u0000']
  for (const user of users) {
    const r = await chat(open.url, { model: 'fake/ok', user, messages: [{ role: 'user', content: `for ${JSON.stringify(user)}` }] })
    t.equal(r.status, 200)
    t.equal(JSON.parse(fake.requests.at(-1)!.body).user, ORG, `${JSON.stringify(user)}: upstream sees the organization`)
  }
  const rows = await rowsSoon(async () => {
    const got = await db.sql<Array<{ user_id: string | null, external_user_id: string }>>`select user_id, external_user_id from usage_events where model = 'fake/ok' and (user_id is null or user_id = '')`
    return got.length >= users.length ? got : []
  })
  t.same(rows.map((r) => r.user_id), users.map(() => null), 'user_id null, never an empty string')
  t.same(rows.map((r) => r.external_user_id), users.map(() => ORG))
  const [{ n }] = await db.sql<[{ n: number }]>`select count(*)::int as n from user_mappings where user_id = ''`
  t.equal(n, 0, 'no mapping for an empty id')
})

t.test('"My usage" gets the normalized id: nobody is told so, z\\u0000ed reads zed\'s usage', async (t) => {
  const nobody = await chat(open.url, { model: 'usage-proxy/my-usage', user: '\u0007\u0000', messages: [{ role: 'user', content: 'usage?' }] })
  t.match(JSON.parse(nobody.text).choices[0].message.content, /cannot tell who you are/, 'the organization\'s spend is not shown as a user\'s')
  t.equal((await chat(open.url, { model: 'fake/ok', user: 'zed', messages: [{ role: 'user', content: 'hi' }] })).status, 200)
  await rowsSoon(() => db.sql`select 1 from usage_events where user_id = 'zed'`)
  const zed = await chat(open.url, { model: 'usage-proxy/my-usage', user: 'z\u0000ed', messages: [{ role: 'user', content: 'usage?' }] })
  const content = JSON.parse(zed.text).choices[0].message.content as string
  t.match(content, /over 1 requests?/, 'zed\'s one request')
  t.equal(JSON.parse(fake.requests.at(-1)!.body).user, externalUserId(ORG, 'zed'))
})
