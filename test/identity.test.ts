import t from 'tap'
import { externalUserId } from '../src/identity/external-id.js'
import { decodeName, identify, type IdentityOptions } from '../src/identity/identify.js'
import { verifyJwt } from '../src/identity/jwt.js'
import { signJwt } from './support/sign-jwt.js'

const opts: IdentityOptions = {
  userIdHeader: 'x-openwebui-user-id', userNameHeader: 'x-openwebui-user-name', userEmailHeader: 'x-openwebui-user-email',
  userRoleHeader: 'x-openwebui-user-role', chatIdHeader: 'x-openwebui-chat-id', jwtHeader: 'x-openwebui-user-jwt',
  jwtSecret: undefined, trustBodyUser: true,
}
const SECRET = 'a-very-long-shared-secret-123'
const now = () => Math.floor(Date.now() / 1000)

t.test('external ids: deterministic, distinct, ASCII, at most 128 characters', async (t) => {
  const a = externalUserId('mai_client_63a4eb6d', 'u-1')
  t.equal(a, externalUserId('mai_client_63a4eb6d', 'u-1'))
  t.not(a, externalUserId('mai_client_63a4eb6d', 'u-2'))
  t.not(a, externalUserId('mai_client_other', 'u-1'))
  t.match(a, /^mai_client_63a4eb6d_user_[0-9a-f]{16}$/)
  t.ok(externalUserId('x'.repeat(100), 'ü'.repeat(500)).length <= 128)
})

t.test('names arrive percent-encoded', async (t) => {
  t.equal(decodeName('Jos%C3%A9 %C3%91'), 'José Ñ')
  t.equal(decodeName('100% sure'), '100% sure', 'not valid encoding: kept as sent')
  t.equal(decodeName(null), null)
})

t.test('order: headers, then body user, then the organization', async (t) => {
  const h = identify({ 'x-openwebui-user-id': 'u1', 'x-openwebui-user-name': 'A%20B', 'x-openwebui-chat-id': 'c1' }, 'body-user', opts)
  t.same(h, { userId: 'u1', name: 'A B', email: null, role: null, chatId: 'c1', source: 'headers', groups: [], apiKey: null })
  t.equal(identify({}, 'body-user', opts).source, 'body')
  t.equal(identify({}, 'body-user', { ...opts, trustBodyUser: false }).source, 'organization')
  t.equal(identify({}, 42, opts).source, 'organization')
  t.equal(identify({ 'x-custom-uid': 'z' }, undefined, { ...opts, userIdHeader: 'x-custom-uid' }).userId, 'z', 'header names are configurable')
})

t.test('signed identity: verified, and plain headers are not trusted once a secret is set', async (t) => {
  const withSecret = { ...opts, jwtSecret: SECRET }
  const token = signJwt({ sub: 'u9', name: 'Zoë', email: 'z@x', role: 'admin', iss: 'open-webui', iat: now(), exp: now() + 300 }, SECRET)
  t.same(identify({ 'x-openwebui-user-jwt': token }, undefined, withSecret), { userId: 'u9', name: 'Zoë', email: 'z@x', role: 'admin', chatId: null, source: 'jwt', groups: [], apiKey: null })
  t.equal(identify({ 'x-openwebui-user-id': 'forged' }, undefined, withSecret).source, 'organization', 'forgeable headers ignored')
  const forged = signJwt({ sub: 'u9', iss: 'open-webui', exp: now() + 300 }, 'another-secret-of-length')
  t.throws(() => identify({ 'x-openwebui-user-jwt': forged }, undefined, withSecret), /invalid x-openwebui-user-jwt: bad signature/)
  const expired = signJwt({ sub: 'u9', iss: 'open-webui', exp: now() - 3600 }, SECRET)
  t.throws(() => identify({ 'x-openwebui-user-jwt': expired }, undefined, withSecret), /expired/)
})

t.test('jwt verification refuses every trick', async (t) => {
  const good = signJwt({ sub: 's', iss: 'open-webui', exp: now() + 60 }, SECRET)
  t.equal(verifyJwt(good, SECRET, { issuer: 'open-webui' }).sub, 's')
  const [h, p] = good.split('.')
  const none = Buffer.from(JSON.stringify({ alg: 'none' })).toString('base64url')
  t.throws(() => verifyJwt(`${none}.${p}.`, SECRET), /algorithm/)
  t.throws(() => verifyJwt(`${h}.${p}`, SECRET), /malformed/)
  t.throws(() => verifyJwt('a.b.c', SECRET), /malformed/)
  t.throws(() => verifyJwt(signJwt({ sub: 's', iss: 'elsewhere', exp: now() + 60 }, SECRET), SECRET, { issuer: 'open-webui' }), /issuer/)
  t.throws(() => verifyJwt(signJwt({ sub: 's', exp: now() + 60, nbf: now() + 3600 }, SECRET), SECRET), /not yet/)
  t.throws(() => verifyJwt(signJwt({ iss: 'open-webui', exp: now() + 60 }, SECRET), SECRET), /subject/)
  t.throws(() => verifyJwt(signJwt({ sub: 's' }, SECRET), SECRET), /expired/, 'no exp is refused')
  const tampered = signJwt({ sub: 'admin', exp: now() + 60 }, SECRET).split('.')
  t.throws(() => verifyJwt(`${tampered[0]}.${p}.${tampered[2]}`, SECRET), /signature/)
})
