import t from 'tap'
import { request } from 'undici'
import { connect, type Socket } from 'node:net'
import { gunzipSync } from 'node:zlib'
import type { AddressInfo } from 'node:net'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, TEST_KEY, type Started } from './support/sidecar.js'
import { signJwt } from './support/sign-jwt.js'
import { externalUserId } from '../src/identity/external-id.js'
import { createProxyServer } from '../src/proxy/server.js'
import { createLogger } from '../src/lib/log.js'
import { LogSink } from './support/log-sink.js'

// The edge: what reaches OpenRouter, which paths pass, who may hold a connection, and
// that a fault in one exchange stays in that exchange.

let fake: FakeOpenRouter
let db: TestDb
let s: Started
const PROXY_KEY = 'edge-proxy-key-0123456789'
const auth = { authorization: `Bearer ${PROXY_KEY}` }

t.before(async () => {
  fake = await new FakeOpenRouter(8).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { PROXY_API_KEY: PROXY_KEY }))
})
t.teardown(async () => { await s?.sidecar.stop(); await fake?.close(); await db?.drop() })

interface RawResponse { status: number, headers: Record<string, string>, body: Buffer, closed: boolean }

/**
 * One request written byte for byte (undici refuses `Expect`, odd `Connection` values and
 * backslashes), answered on a connection the test then closes. Interim 1xx answers are skipped.
 */
function raw (url: string, text: string | Buffer, opts: { localAddress?: string } = {}): Promise<RawResponse> {
  const { port } = new URL(url)
  return new Promise((resolve, reject) => {
    const sock = connect({ port: Number(port), host: '127.0.0.1', localAddress: opts.localAddress }, () => sock.write(text))
    const parts: Buffer[] = []
    const tryParse = (closed: boolean): boolean => {
      let buf = Buffer.concat(parts)
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end === -1) return false
        const head = buf.subarray(0, end).toString('latin1').split('\r\n')
        const status = Number(head[0].split(' ')[1])
        const headers: Record<string, string> = {}
        for (const line of head.slice(1)) { const i = line.indexOf(':'); headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim() }
        if (status < 200) { buf = buf.subarray(end + 4); continue }
        const isHead = text.toString().startsWith('HEAD ')
        const length = isHead ? 0 : headers['content-length'] === undefined ? null : Number(headers['content-length'])
        const body = buf.subarray(end + 4)
        if (length === null) {
          if (!closed) return false
          resolve({ status, headers, body: headers['transfer-encoding'] === 'chunked' ? dechunk(body) : body, closed })
        } else {
          if (body.length < length) return false
          resolve({ status, headers, body: body.subarray(0, length), closed })
        }
        sock.destroy()
        return true
      }
    }
    sock.on('data', (c) => { parts.push(c); tryParse(false) })
    sock.on('close', () => { if (!tryParse(true)) reject(new Error(`connection closed without a full answer: ${Buffer.concat(parts).toString('latin1').slice(0, 200)}`)) })
    sock.on('error', () => {})
  })
}

function dechunk (b: Buffer): Buffer {
  const out: Buffer[] = []
  for (let at = 0; ;) {
    const eol = b.indexOf('\r\n', at)
    const size = parseInt(b.subarray(at, eol).toString('latin1'), 16)
    if (!(size > 0)) return Buffer.concat(out)
    out.push(b.subarray(eol + 2, eol + 2 + size))
    at = eol + 2 + size + 2
  }
}

// The sidecar's own background poll of GET /key (no X-Title) is not a client request passed through.
const forwarded = () => fake.requests.filter((r) => !(r.path.endsWith('/key') && r.headers['x-title'] === undefined))
const lastUpstream = () => forwarded().at(-1)!

t.test('Expect: 100-continue on a GET passthrough still gets the org key and loses the client\'s credentials', async (t) => {
  const before = forwarded().length
  const res = await raw(s.url, 'GET /v1/models HTTP/1.1\r\nHost: x\r\n' +
    `Authorization: Bearer ${PROXY_KEY}\r\nExpect: 100-continue\r\nX-API-Key: client-key-abc\r\n` +
    'X-OpenWebUI-User-Jwt: eyJ.client.jwt\r\nX-OpenWebUI-User-Email: victim@example.com\r\nCookie: session=abc\r\n' +
    'Proxy-Authorization: Basic Zm9vOmJhcg==\r\nConnection: close\r\n\r\n')
  t.equal(res.status, 200)
  const list = JSON.parse(res.body.toString()) as { data: Array<{ id: string }> }
  t.same(list.data.slice(0, -1), fake.models)
  t.equal(list.data.at(-1)?.id, 'usage-proxy/my-usage', 'the virtual My usage model is appended')
  t.equal(forwarded().length, before + 1)
  const up = lastUpstream().headers
  t.equal(up.authorization, `Bearer ${TEST_KEY}`, 'the org key, not the client\'s')
  for (const h of ['x-api-key', 'x-openwebui-user-jwt', 'x-openwebui-user-email', 'cookie', 'proxy-authorization', 'expect']) {
    t.equal(up[h], undefined, `${h} stays here`)
  }
  t.equal(up['x-title'], 'usage-proxy')
})

t.test('backslash dot segments, plain or percent-encoded, are refused with 404 and never forwarded', async (t) => {
  const before = forwarded().length
  for (const [method, path] of [['GET', '/v1/..\\credits'], ['GET', '/v1/models\\..\\..\\credits'], ['GET', '/v1/..%5ccredits'],
    ['GET', '/api/v1/%5C..%5Ccredits'], ['HEAD', '/v1/..\\key'], ['POST', '/v1/chat\\..\\keys'], ['POST', '/v1/chat%5ccompletions']]) {
    const res = await raw(s.url, `${method} ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${PROXY_KEY}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`)
    t.equal(res.status, 404, `${method} ${path}`)
    if (method !== 'HEAD') t.match(JSON.parse(res.body.toString()), { error: { type: 'not_found_error', code: 'not_found', message: String } })
  }
  t.equal(forwarded().length, before, 'nothing reached OpenRouter')
})

t.test('the GET passthrough serves the model catalogue only', async (t) => {
  for (const path of ['/v1/credits', '/v1/key', '/v1/keys', '/v1/keys/abc', '/v1/activity', '/v1/auth/keys', '/v1/generation?id=gen-someone-elses',
    '/api/v1/credits', '/v1/chat/completions', '/v1/models/x/y/z/endpoints', '/v1/models/a/b']) {
    const before = forwarded().length
    const res = await request(s.url + path, { headers: auth })
    t.equal(res.statusCode, 404, `GET ${path}`)
    t.match(await res.body.json(), { error: { type: 'not_found_error', code: 'not_found', message: String } })
    const head = await request(s.url + path, { method: 'HEAD', headers: auth })
    t.equal(head.statusCode, 404, `HEAD ${path}`)
    await head.body.dump()
    t.equal(forwarded().length, before, `${path} not forwarded`)
  }
  for (const path of ['/models', '/models?supported_parameters=tools', '/models/count', '/models/user', '/models/openai/gpt-4o:free/endpoints',
    '/embeddings/models', '/providers']) {
    const before = forwarded().length
    const res = await request(s.url + '/v1' + path, { headers: auth })
    await res.body.dump()
    t.equal(forwarded().length, before + 1, `${path} forwarded`)
    t.equal(lastUpstream().path, '/api/v1' + path)
    t.equal(lastUpstream().headers.authorization, `Bearer ${TEST_KEY}`)
  }
})

t.test('a GET body and method-override headers do not travel upstream', async (t) => {
  const before = forwarded().length
  const body = '{"name":"new key","limit":1000}'
  const res = await raw(s.url, `GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${PROXY_KEY}\r\n` +
    'X-HTTP-Method-Override: POST\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: PUT\r\nContent-Type: application/json\r\n' +
    `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`)
  t.equal(res.status, 200)
  t.equal(forwarded().length, before + 1)
  const up = lastUpstream()
  t.equal(up.method, 'GET')
  t.equal(up.body, '', 'the body was dropped')
  for (const h of ['x-http-method-override', 'x-http-method', 'x-method-override', 'content-length', 'transfer-encoding']) t.equal(up.headers[h], undefined, `${h} dropped`)
})

t.test('proxy-authorization and headers named in Connection never travel upstream, metered or passthrough', async (t) => {
  const body = JSON.stringify({ model: 'fake/ok', messages: [], user: 'hop-user' })
  const res = await raw(s.url, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${PROXY_KEY}\r\n` +
    'Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\nConnection: close, X-Hop-Secret, X-Other-Hop\r\nX-Hop-Secret: hop-value\r\nX-Other-Hop: 1\r\n' +
    'X-HTTP-Method-Override: DELETE\r\nX-Kept: kept\r\nAccept-Encoding: gzip, br\r\n' +
    `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`)
  t.equal(res.status, 200)
  let up = lastUpstream()
  t.equal(up.path, '/api/v1/chat/completions')
  for (const h of ['proxy-authorization', 'x-hop-secret', 'x-other-hop', 'x-http-method-override']) t.equal(up.headers[h], undefined, `metered: ${h} dropped`)
  t.equal(up.headers['x-kept'], 'kept', 'an ordinary end-to-end header goes on')
  t.equal(up.headers['accept-encoding'], 'identity', 'the tap asks for plain bytes')
  t.equal(up.headers.authorization, `Bearer ${TEST_KEY}`)
  const pass = await raw(s.url, `GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${PROXY_KEY}\r\n` +
    'Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\nConnection: close, X-Hop-Secret\r\nX-Hop-Secret: hop-value\r\nX-Kept: kept\r\n\r\n')
  t.equal(pass.status, 200)
  up = lastUpstream()
  t.equal(up.path, '/api/v1/models')
  for (const h of ['proxy-authorization', 'x-hop-secret']) t.equal(up.headers[h], undefined, `passthrough: ${h} dropped`)
  t.equal(up.headers['x-kept'], 'kept')
})

async function rowFor (gen: string): Promise<any> {
  for (let i = 0; i < 400; i++) {
    const [row] = await db.sql`select *, cost_usd::text as cost_text from usage_events where generation_id = ${gen}`
    if (row) return row
    await new Promise((r) => setTimeout(r, 25))
  }
  return undefined
}

t.test('an upstream that answers gzip anyway: the client gets the bytes untouched, the tap reads them decompressed', async (t) => {
  for (const stream of [false, true]) {
    const lookups = fake.generationLookups
    const res = await request(s.url + '/v1/chat/completions', {
      method: 'POST', headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'fake/gzip', stream, messages: [], user: 'gzip-user' }),
    })
    t.equal(res.statusCode, 200)
    t.equal(res.headers['content-encoding'], 'gzip', 'the coding is passed on with the bytes')
    const gen = String(res.headers['x-generation-id'])
    const bytes = Buffer.from(await res.body.arrayBuffer())
    t.ok(bytes.equals(fake.sent.get(gen)!), 'byte for byte what OpenRouter sent')
    t.match(gunzipSync(bytes).toString(), /"usage"/)
    const row = await rowFor(gen)
    const g = fake.generations.get(gen)!
    t.same([row?.outcome, row?.usage_source, row?.cost_text, row?.prompt_tokens, row?.streamed], ['ok', 'inline', g.cost, g.promptTokens, stream],
      `${stream ? 'stream' : 'json'}: usage read inline, exact`)
    t.equal(fake.generationLookups, lookups, 'no /generation lookup was needed')
  }
})

t.test('an unauthenticated request is answered 401 and its connection closed, without waiting for its body', { timeout: 20_000 }, async (t) => {
  const { port } = new URL(s.url)
  const before = forwarded().length
  const result = await new Promise<{ text: string }>((resolve) => {
    const sock = connect(Number(port), '127.0.0.1', () => {
      // A body announced, never finished: waiting for it would hold the connection for minutes.
      sock.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"model":')
    })
    let text = ''
    sock.on('data', (c) => { text += c })
    sock.on('close', () => resolve({ text }))
    sock.on('error', () => {})
  })
  t.match(result.text, /^HTTP\/1\.1 401 /)
  t.match(result.text, /\r\nconnection: close\r\n/i)
  t.match(result.text, /"type":"authentication_error"/)
  t.equal(forwarded().length, before)
})

/** Opens a connection and proves the server serves it (so it is counted), keeping it open. */
function held (url: string, localAddress?: string): Promise<{ sock: Socket, served: boolean }> {
  const { port } = new URL(url)
  return new Promise((resolve) => {
    const sock = connect({ port: Number(port), host: '127.0.0.1', localAddress }, () => sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'))
    let text = ''
    sock.on('data', (c) => {
      text += c
      if (text.includes('{"status":"ok"}')) resolve({ sock, served: true })
    })
    sock.on('close', () => resolve({ sock, served: false }))
    sock.on('error', () => {})
  })
}

t.test('MAX_CONNECTIONS and MAX_CONNECTIONS_PER_IP close connections over the bound', async (t) => {
  const capped = await startSidecar(baseEnv(fake, db.url, { MAX_CONNECTIONS: '3', MAX_CONNECTIONS_PER_IP: '2' }))
  const open: Socket[] = []
  t.teardown(async () => { for (const sock of open) sock.destroy(); await capped.sidecar.stop() })
  const take = async (addr: string) => { const h = await held(capped.url, addr); open.push(h.sock); return h.served }
  t.ok(await take('127.0.0.1'), 'first from 127.0.0.1')
  t.ok(await take('127.0.0.1'), 'second from 127.0.0.1')
  t.notOk(await take('127.0.0.1'), 'a third from the same address is closed')
  t.ok(await take('127.0.0.2'), 'another address still gets in')
  t.notOk(await take('127.0.0.3'), 'past MAX_CONNECTIONS nobody does')
  // Freed slots are usable again once the server has seen the close.
  open.shift()!.destroy()
  let again = false
  for (let i = 0; i < 200 && !again; i++) {
    again = await take('127.0.0.1')
    if (!again) await new Promise((r) => setTimeout(r, 10))
  }
  t.ok(again, 'a closed connection frees its slot')
})

t.test('REQUIRE_USER_IDENTITY refuses a request no user can be named for, with or without a JWT secret', async (t) => {
  const secret = 'require-identity-secret-0123456789'
  const signed = await startSidecar(baseEnv(fake, db.url, { REQUIRE_USER_IDENTITY: 'true', FORWARD_USER_INFO_HEADER_JWT_SECRET: secret }))
  const plain = await startSidecar(baseEnv(fake, db.url, { REQUIRE_USER_IDENTITY: 'true' }))
  t.teardown(async () => { await signed.sidecar.stop(); await plain.sidecar.stop() })
  const post = (url: string, headers: Record<string, string>, body: Record<string, unknown>) =>
    request(url + '/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ model: 'fake/ok', messages: [], ...body }) })

  const before = forwarded().length
  for (const [url, headers, body, why] of [
    [signed.url, {}, {}, 'signed mode, nothing'],
    [signed.url, { 'x-openwebui-user-id': 'forged' }, {}, 'signed mode, only a forgeable header'],
    [signed.url, {}, { user: 'body-user' }, 'signed mode, only an untrusted body user'],
    [plain.url, {}, {}, 'plain mode, nothing'],
  ] as const) {
    const res = await post(url, headers, body)
    t.equal(res.statusCode, 401, why)
    t.match(await res.body.json(), { error: { type: 'authentication_error', code: 'invalid_identity', message: /REQUIRE_USER_IDENTITY/ } }, why)
  }
  t.equal(forwarded().length, before, 'nothing was forwarded, nothing billed to the organization')

  const now = Math.floor(Date.now() / 1000)
  const token = signJwt({ sub: 'signed-user', iss: 'open-webui', iat: now, exp: now + 300 }, secret)
  const ok = await post(signed.url, { 'x-openwebui-user-jwt': token }, {})
  t.equal(ok.statusCode, 200)
  await ok.body.dump()
  t.equal(JSON.parse(lastUpstream().body).user, externalUserId('mai_client_63a4eb6d', 'signed-user'))
  for (const [headers, body, user] of [[{ 'x-openwebui-user-id': 'header-user' }, {}, 'header-user'], [{}, { user: 'body-user' }, 'body-user']] as const) {
    const res = await post(plain.url, headers, body)
    t.equal(res.statusCode, 200)
    await res.body.dump()
    t.equal(JSON.parse(lastUpstream().body).user, externalUserId('mai_client_63a4eb6d', user))
  }
})

t.test('plain identity headers next to a JWT secret are logged, once per interval rather than per request', async (t) => {
  const secret = 'warning-secret-0123456789abcdef'
  const signed = await startSidecar(baseEnv(fake, db.url, { FORWARD_USER_INFO_HEADER_JWT_SECRET: secret }))
  t.teardown(() => signed.sidecar.stop())
  const warnings = () => signed.logs.lines.filter((l) => l.includes('plain identity headers arrived')).length
  t.equal(warnings(), 0)
  for (let i = 0; i < 5; i++) {
    const res = await request(signed.url + '/v1/chat/completions', {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-openwebui-user-id': `forger-${i}`, 'x-openwebui-user-email': 'forger@example.com' },
      body: JSON.stringify({ model: 'fake/ok', messages: [] }),
    })
    t.equal(res.statusCode, 200)
    await res.body.dump()
  }
  t.equal(warnings(), 1, 'five requests, one warning')
  t.notMatch(signed.logs.text, /forger@example\.com|forger-\d/, 'the header values are not logged')
})

t.test('route guard: an exception thrown while routing answers that exchange 500 and the server goes on', async (t) => {
  const logs = new LogSink()
  const log = createLogger('debug', logs)
  let calls = 0
  const server = createProxyServer({
    log,
    passthrough: { handle (_req, res) { if (++calls === 1) throw new TypeError('bug in a handler'); res.end('{"data":[]}') }, close () {} },
    proxyApiKey: undefined,
    plane: () => ({ meter: {} as any }),
    adminEnabled: false,
    clientTimeouts: { headersMs: 5000, requestMs: 10000 },
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const bad = await request(url + '/v1/models')
  t.equal(bad.statusCode, 500)
  t.match(await bad.body.json(), { error: { type: 'api_error', code: 'internal_error', message: String } })
  const good = await request(url + '/v1/models')
  t.equal(good.statusCode, 200, 'the next exchange is served')
  await good.body.dump()
  t.match(logs.text, /request handling failed/)
  t.match(logs.text, /bug in a handler/)
})
