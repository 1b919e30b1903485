import t from 'tap'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { createAdmin, type AdminRoute } from '../src/admin/router.js'
import { sessionRoutes } from '../src/admin/session.js'
import { createLogger } from '../src/lib/log.js'

// The admin router and the sign-in routes on a plain server, with a clock the test moves.
const KEY = 'admin-key-for-session-tests-0123456789'
let clock = 1_000_000
const probe: AdminRoute = { method: 'GET', path: /^\/admin\/v1\/probe$/, handle: ({ res }) => { res.writeHead(200).end('probe') } }
const admin = createAdmin(KEY, [...sessionRoutes(KEY, () => clock), probe], createLogger('silent'))
const server: Server = createServer((req, res) => admin(req, res))
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`

async function call (path: string, init: { method?: string, headers?: Record<string, string>, body?: string } = {}) {
  const r = await request(`${base}${path}`, { method: (init.method ?? 'GET') as 'GET', headers: init.headers, body: init.body })
  const text = await r.body.text()
  return { status: r.statusCode, headers: r.headers, json: text.startsWith('{') ? JSON.parse(text) as { error: { type: string, code: string } } : null }
}
const signIn = (key: string, headers: Record<string, string> = {}) =>
  call('/admin/sign-in', { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ key }) })

t.test('a wrong method on a key-only path is 401 without the key and 405 with it; on the public sign-in path it is 405', async (t) => {
  const anon = await call('/admin/v1/probe', { method: 'DELETE' })
  t.equal(anon.status, 401, 'anonymous callers do not learn which methods a path takes')
  t.equal(anon.json?.error.code, 'invalid_admin_key')
  const keyed = await call('/admin/v1/probe', { method: 'DELETE', headers: { authorization: `Bearer ${KEY}` } })
  t.equal(keyed.status, 405)
  t.equal(keyed.json?.error.code, 'method_not_allowed')
  t.equal((await call('/admin/sign-in', { method: 'GET' })).status, 405, 'sign-in is public: its methods are no secret')
  t.equal((await call('/admin/v1/probe', { headers: { authorization: `Bearer ${KEY}` } })).status, 200)
})

t.test('the cookie is Secure when the page was reached over https (a proxy in front says so), and not on plain http', async (t) => {
  const plain = await signIn(KEY)
  t.equal(plain.status, 204)
  t.notOk(String(plain.headers['set-cookie']).split('; ').includes('Secure'), 'plain http: a Secure cookie would never come back')
  const tls = await signIn(KEY, { 'x-forwarded-proto': 'https' })
  t.equal(tls.status, 204)
  const attrs = String(tls.headers['set-cookie']).split('; ')
  for (const a of ['Secure', 'HttpOnly', 'SameSite=Strict', 'Path=/admin']) t.ok(attrs.includes(a), a)
})

t.test('ten wrong keys from one address close sign-in to it for the rest of the minute, with Retry-After; then it opens again', async (t) => {
  for (let i = 0; i < 10; i++) t.equal((await signIn(`wrong-${i}`)).status, 401, `wrong key ${i + 1}`)
  clock += 20_000
  const blocked = await signIn(KEY)
  t.equal(blocked.status, 429, 'even the right key waits: the address is blocked, not the guess')
  t.equal(blocked.json?.error.code, 'too_many_sign_in_attempts')
  t.equal(blocked.headers['retry-after'], '40', 'seconds left in the window')
  t.equal((await call('/admin/v1/probe', { headers: { authorization: `Bearer ${KEY}` } })).status, 200, 'the API with the key is not affected')
  clock += 40_000
  t.equal((await signIn(KEY)).status, 204, 'the window over, the right key signs in')
  for (let i = 0; i < 9; i++) await signIn(`wrong-again-${i}`)
  t.equal((await signIn(KEY)).status, 204, 'nine wrong keys in a new window do not block')
})
