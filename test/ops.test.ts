import t from 'tap'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { createMetrics } from '../src/ops/metrics.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'

// Operations: the access log, a count for every answer, metrics conventions and protection.

let fake: FakeOpenRouter
let db: TestDb
t.before(async () => {
  fake = await new FakeOpenRouter(7).start()
  db = await createTestDb({ migrated: true })
})
t.teardown(async () => { await fake?.close(); await db?.drop() })

const KEY = 'proxy-secret-key-1234'
const ORG = '{organization="mai_client_63a4eb6d"}'
const json = { 'content-type': 'application/json' }
const auth = { ...json, authorization: `Bearer ${KEY}` }

async function call (s: Started, path: string, init: { method?: string, headers?: Record<string, string>, body?: string } = {}): Promise<{ status: number, text: string }> {
  const res = await request(s.url + path, { method: (init.method ?? 'GET') as 'GET', headers: init.headers, body: init.body })
  return { status: res.statusCode, text: await res.body.text() }
}

const accessLines = (s: Started): Array<Record<string, any>> =>
  s.logs.text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((l) => l.msg === 'access')

async function until<T> (read: () => T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = read()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

function sample (text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `))
  return line === undefined ? undefined : Number(line.split(' ')[1])
}

t.test('access log: one line per exchange with its facts, and every answer counted', async (t) => {
  const s = await startSidecar(baseEnv(fake, db.url, { PROXY_API_KEY: KEY, MAX_BODY_BYTES: '2000' }))
  t.teardown(() => s.sidecar.stop('test end'))
  const ok = await call(s, '/v1/chat/completions', {
    method: 'POST', headers: { ...auth, 'x-openwebui-user-id': 'u-access' }, body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }] }),
  })
  t.equal(ok.status, 200)
  const gen = JSON.parse(ok.text).id as string
  t.equal((await call(s, '/v1/models', { headers: auth })).status, 200)
  t.equal((await call(s, '/v1/chat/completions', { method: 'POST', headers: json, body: '{}' })).status, 401)
  t.equal((await call(s, '/v1/chat/completions', { method: 'POST', headers: auth, body: '{nope' })).status, 400)
  t.equal((await call(s, '/healthz')).status, 200)
  t.equal((await call(s, '/nowhere')).status, 404)
  t.equal((await call(s, '/v1/chat/completions', { method: 'POST', headers: auth, body: JSON.stringify({ model: 'x', pad: 'x'.repeat(3000) }) })).status, 413)
  t.equal((await call(s, '/v1/chat/completions', { method: 'POST', headers: auth, body: JSON.stringify({ model: 'fake/error-402', messages: [] }) })).status, 402)

  const lines = await until(() => { const l = accessLines(s); return l.length >= 7 ? l : undefined }, 'seven access lines')
  const metered = lines.find((l) => l.generationId === gen)
  t.match(metered, { status: 200, method: 'POST', endpoint: '/v1/chat/completions', route: 'metered', model: 'fake/ok', outcome: 'ok', user: 'u-access', externalUser: /^mai_client_63a4eb6d_user_[0-9a-f]{16}$/ })
  t.type(metered?.durationMs, 'number')
  t.type(metered?.ttfbMs, 'number')
  t.notOk(lines.some((l) => l.route === 'probe'), 'a healthy probe is not logged (it is counted)')
  t.ok(lines.some((l) => l.route === 'passthrough' && l.status === 200 && l.endpoint === '/v1/models'), 'passthrough logged')
  for (const status of [401, 400, 404, 413, 402]) t.ok(lines.some((l) => l.status === status), `${status} logged`)
  t.notMatch(s.logs.text, KEY, 'the proxy key is never logged')

  const text = (await call(s, '/metrics')).text
  t.equal(sample(text, 'usage_proxy_http_responses_total', '{route_class="metered",status="401"}'), 1, '401 counted')
  t.equal(sample(text, 'usage_proxy_http_responses_total', '{route_class="metered",status="400"}'), 1, '400 counted')
  t.equal(sample(text, 'usage_proxy_http_responses_total', '{route_class="metered",status="413"}'), 1, '413 counted')
  t.equal(sample(text, 'usage_proxy_http_responses_total', '{route_class="other",status="404"}'), 1, '404 counted')
  t.equal(sample(text, 'usage_proxy_http_responses_total', '{route_class="metered",status="200"}'), 1)
  t.equal(sample(text, 'usage_proxy_http_responses_total', '{route_class="metered",status="402"}'), 1)
  t.equal(sample(text, 'usage_proxy_http_responses_total', '{route_class="passthrough",status="200"}'), 1)
})

t.test('access log: a client that leaves mid-stream is logged once its record is built, with its generation', async (t) => {
  const s = await startSidecar(baseEnv(fake, db.url))
  t.teardown(() => s.sidecar.stop('test end'))
  const ac = new AbortController()
  const res = await request(s.url + '/v1/chat/completions', {
    method: 'POST', headers: json, body: JSON.stringify({ model: 'fake/ok', stream: true, messages: [] }), signal: ac.signal,
  })
  let seen = ''
  await new Promise<void>((resolve) => res.body.on('data', (c: Buffer) => { seen += c.toString(); if (seen.includes('gen-')) resolve() }))
  ac.abort()
  res.body.on('error', () => {})
  const line = await until(() => accessLines(s).find((l) => l.route === 'metered'), 'the aborted exchange\'s line')
  t.match(line, { outcome: 'client_aborted', generationId: /^gen-/, model: 'fake/ok' })
})

t.test('ACCESS_LOG=off: no access lines, but an upstream 502 on the metered path is still logged', async (t) => {
  const s = await startSidecar({ ...baseEnv(fake, db.url), ACCESS_LOG: 'off', OPENROUTER_BASE_URL: 'http://127.0.0.1:9/api/v1' })
  t.teardown(() => s.sidecar.stop('test end'))
  t.equal((await call(s, '/nowhere')).status, 404)
  t.equal((await call(s, '/v1/chat/completions', { method: 'POST', headers: json, body: JSON.stringify({ model: 'fake/ok', messages: [] }) })).status, 502)
  const line = await until(() => accessLines(s).find((l) => l.status === 502), 'the 502 line')
  t.match(line, { route: 'metered', outcome: 'upstream_unreachable', model: 'fake/ok' })
  t.equal(accessLines(s).length, 1, 'nothing else: the 404 is not logged')
  const text = (await call(s, '/metrics')).text
  t.equal(sample(text, 'usage_proxy_http_responses_total', '{route_class="other",status="404"}'), 1, 'but it is counted')
})

t.test('a sidecar answer while not ready (503) is logged and counted', async (t) => {
  const port = await closedPort()
  const s = await startNotReady({ ...baseEnv(fake, `postgres://postgres@127.0.0.1:${port}/none`), DB_CONNECT_RETRY_MAX_MS: '200' })
  t.teardown(() => s.stop('test end'))
  const res = await request(`http://127.0.0.1:${s.port}/v1/chat/completions`, { method: 'POST', headers: json, body: '{}' })
  t.equal(res.statusCode, 503)
  await res.body.dump()
  const m = await request(`http://127.0.0.1:${s.port}/metrics`)
  const text = await m.body.text()
  t.equal(sample(text, 'usage_proxy_http_responses_total', '{route_class="metered",status="503"}'), 1)
  t.equal(sample(text, 'usage_proxy_postgres_up'), 0, 'postgres_up is 0 while it cannot be reached')
})

t.test('x-api-key is the proxy key on /messages (Anthropic SDK), and only there', async (t) => {
  const s = await startSidecar(baseEnv(fake, db.url, { PROXY_API_KEY: KEY }))
  t.teardown(() => s.sidecar.stop('test end'))
  const body = JSON.stringify({ model: 'fake/ok', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] })
  const ok = await call(s, '/v1/messages', { method: 'POST', headers: { ...json, 'x-api-key': KEY, 'anthropic-version': '2023-06-01' }, body })
  t.equal(ok.status, 200)
  const upstream = fake.requests.at(-1)!
  t.equal(upstream.headers['x-api-key'], undefined, 'the proxy key does not travel upstream')
  t.equal((await call(s, '/v1/messages', { method: 'POST', headers: { ...json, 'x-api-key': 'wrong-key' }, body })).status, 401)
  t.equal((await call(s, '/v1/chat/completions', { method: 'POST', headers: { ...json, 'x-api-key': KEY }, body })).status, 401, 'not on other endpoints')
})

t.test('metrics conventions: counters end in _total, Node metrics unprefixed, postgres and key balance gauges (behind METRICS_API_KEY)', async (t) => {
  const before = fake.requests.filter((r) => r.path.endsWith('/key')).length
  const s = await startSidecar(baseEnv(fake, db.url, { METRICS_API_KEY: 'metrics-key-0123456789' }))
  t.teardown(() => s.sidecar.stop('test end'))
  const scrape = async (): Promise<string> => (await call(s, '/metrics', { headers: { authorization: 'Bearer metrics-key-0123456789' } })).text
  let out = ''
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    out = await scrape()
    if (sample(out, 'usage_proxy_openrouter_key_limit_remaining_usd', ORG) !== undefined) break
    await new Promise((r) => setTimeout(r, 20))
  }
  for (const name of ['usage_proxy_reconciled_total', 'usage_proxy_reconcile_gave_up_total', 'usage_proxy_ledger_written_total', 'usage_proxy_ledger_rejected_total']) {
    t.match(out, new RegExp(`^# TYPE ${name} counter$`, 'm'), `${name} is a counter`)
    t.equal(sample(out, name), 0)
  }
  t.notMatch(out, /^usage_proxy_(reconciled|reconcile_gave_up|ledger_written) /m, 'the old gauge names are gone')
  t.match(out, /^process_cpu_seconds_total /m, 'Node default metrics without our prefix')
  t.match(out, /^nodejs_heap_size_used_bytes /m)
  t.notMatch(out, /^usage_proxy_process_/m)
  t.equal(sample(out, 'usage_proxy_postgres_up'), 1)
  t.equal(sample(out, 'usage_proxy_openrouter_key_limit_remaining_usd', ORG), 87.5, 'GET /key limit_remaining')
  t.equal(sample(out, 'usage_proxy_openrouter_key_limit_usd', ORG), 100)
  t.equal(sample(out, 'usage_proxy_openrouter_key_usage_usd', ORG), 12.5)
  for (let i = 0; i < 3; i++) await scrape()
  t.equal(fake.requests.filter((r) => r.path.endsWith('/key')).length - before, 1, 'scrapes do not call /key: one background poll')
  t.equal(fake.requests.find((r) => r.path.endsWith('/key'))?.headers.authorization, 'Bearer sk-or-v1-test-key-0123456789', 'with the organization key')
})

t.test('the open data plane\'s /metrics never shows the organization key\'s limit or balance; everything else is there', async (t) => {
  const s = await startSidecar(baseEnv(fake, db.url))
  t.teardown(() => s.sidecar.stop('test end'))
  // Whether or not the background poll has answered yet, a shown gauge has its HELP line.
  t.equal((await call(s, '/v1/chat/completions', { method: 'POST', headers: json, body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }] }) })).status, 200)
  const r = await call(s, '/metrics')
  t.equal(r.status, 200)
  t.notMatch(r.text, /openrouter_key/, 'no key gauge, not even its HELP line')
  t.equal(sample(r.text, 'usage_proxy_postgres_up'), 1, 'the rest is served')
  t.match(r.text, /^usage_proxy_http_responses_total\{/m)
  t.match(r.text, /^process_cpu_seconds_total /m)
})

t.test('METRICS_PORT: the key gauges are on its own listener', async (t) => {
  const mport = await closedPort()
  const s = await startSidecar(baseEnv(fake, db.url, { METRICS_PORT: String(mport) }))
  t.teardown(() => s.sidecar.stop('test end'))
  let text = ''
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    const res = await request(`http://127.0.0.1:${mport}/metrics`)
    text = await res.body.text()
    if (sample(text, 'usage_proxy_openrouter_key_limit_remaining_usd', ORG) !== undefined) break
    await new Promise((r) => setTimeout(r, 20))
  }
  t.equal(sample(text, 'usage_proxy_openrouter_key_limit_remaining_usd', ORG), 87.5)
  t.equal(sample(text, 'usage_proxy_openrouter_key_limit_usd', ORG), 100)
})

t.test('METRICS_API_KEY protects /metrics', async (t) => {
  const s = await startSidecar(baseEnv(fake, db.url, { METRICS_API_KEY: 'metrics-key-0123456789' }))
  t.teardown(() => s.sidecar.stop('test end'))
  const none = await call(s, '/metrics')
  t.equal(none.status, 401)
  t.match(JSON.parse(none.text), { error: { type: 'authentication_error' } })
  t.equal((await call(s, '/metrics', { headers: { authorization: 'Bearer wrong' } })).status, 401)
  const ok = await call(s, '/metrics', { headers: { authorization: 'Bearer metrics-key-0123456789' } })
  t.equal(ok.status, 200)
  t.match(ok.text, /usage_proxy_http_responses_total/)
})

t.test('METRICS_PORT: /metrics on its own loopback listener, not on the data plane', async (t) => {
  const mport = await closedPort()
  const s = await startSidecar(baseEnv(fake, db.url, { METRICS_PORT: String(mport) }))
  t.teardown(() => s.sidecar.stop('test end'))
  t.equal((await call(s, '/metrics')).status, 404, 'not on the main port')
  const res = await request(`http://127.0.0.1:${mport}/metrics`)
  t.equal(res.statusCode, 200)
  t.match(await res.body.text(), /usage_proxy_requests_total|usage_proxy_http_responses_total/)
  t.match(s.logs.text, /"msg":"metrics listening"/)
  t.match(s.logs.text, /"host":"127.0.0.1"/)
})

t.test('20,000 distinct models make a bounded number of series', async (t) => {
  const m = createMetrics(() => null, { maxModels: 50 })
  for (let i = 0; i < 20_000; i++) m.observe(record(`vendor/model-${i}`))
  const text = await scrapeHandler(m.handler)
  const series = text.split('\n').filter((l) => l.includes('model="'))
  const models = new Set(series.map((l) => /model="([^"]*)"/.exec(l)![1]))
  t.equal(models.size, 51, '50 models and other')
  t.ok(models.has('other'))
  t.ok(models.has('vendor/model-0'), 'the first models keep their own series')
  t.ok(series.length <= 51 * 3, `${series.length} series with a model label`)
  const prompt = series.filter((l) => l.startsWith('usage_proxy_tokens_total{') && l.includes('type="prompt"')).reduce((n, l) => n + Number(l.split(' ')[1]), 0)
  t.equal(prompt, 20_000 * 10, 'no traffic lost: other holds the rest')
})

function record (model: string): UsageRecord {
  return {
    eventId: 'e', generationId: null, organizationId: 'o', userId: null, externalUserId: 'x', endpoint: 'chat/completions', model,
    servedModel: null, provider: null, streamed: false, status: 200, outcome: 'ok', finishReason: null, errorMessage: null, usageSource: 'inline',
    promptTokens: 10, completionTokens: 5, totalTokens: 15, cachedTokens: null, reasoningTokens: null, costUsd: '0.001', upstreamCostUsd: null,
    isByok: null, markupPercent: '0', latencyMs: 1, ttfbMs: 1, chatId: null, kind: 'api', messageId: null, createdAt: new Date().toISOString(),
  }
}

async function scrapeHandler (handler: (req: any, res: any) => void, authorization?: string): Promise<string> {
  return new Promise((resolve) => {
    let body = ''
    handler({ headers: authorization ? { authorization } : {} }, { writeHead: () => {}, end: (b: string) => { body = b; resolve(body) } })
  })
}

async function closedPort (): Promise<number> {
  const srv = createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as AddressInfo).port
  await new Promise<void>((r) => srv.close(() => r()))
  return port
}

async function startNotReady (env: Record<string, string | undefined>) {
  const { start } = await import('../src/main.js')
  const { createLogger } = await import('../src/lib/log.js')
  const { LogSink } = await import('./support/sidecar.js')
  const s = await start(env, createLogger('silent', new LogSink()))
  s.ready.catch(() => {})
  return s
}

t.test('the /key poller: reads limit_remaining, keeps the last value on failure, no sample for an unlimited key', async (t) => {
  const { parseKey, startKeyPoller } = await import('../src/ops/openrouter-key.js')
  const { createLogger } = await import('../src/lib/log.js')
  const { LogSink } = await import('./support/sidecar.js')
  t.match(parseKey('{"data":{"limit":null,"limit_remaining":null,"usage":3.5}}'), { limit: null, limitRemaining: null, usage: 3.5 })
  t.equal(parseKey('not json'), null)
  t.equal(parseKey('{"data":null}'), null)
  const sink = new LogSink()
  let calls = 0
  const poller = startKeyPoller(async () => { calls++; return { status: 500, body: 'down' } }, createLogger('info', sink))
  t.teardown(() => poller.stop())
  await until(() => (calls > 0 && sink.text.includes('GET /key gave no balance') ? true : undefined), 'the failed poll')
  t.equal(poller.latest(), null, 'nothing known')
  const balance = () => ({ limit: 10, limitRemaining: null, usage: 3.5, at: 0 })
  t.notMatch(await scrapeHandler(createMetrics(() => null, { organizationId: 'org', keyBalance: balance }).handler), /openrouter_key/,
    'neither a METRICS_API_KEY nor METRICS_PORT: no key gauges')
  t.notMatch(await scrapeHandler(createMetrics(() => null, { organizationId: 'org', keyBalance: balance, apiKey: '' }).handler), /openrouter_key/, 'an empty key is none')
  const keyed = createMetrics(() => null, { organizationId: 'org', keyBalance: balance, apiKey: 'metrics-key-0123456789' })
  const keyedText = await scrapeHandler(keyed.handler, 'Bearer metrics-key-0123456789')
  t.equal(sample(keyedText, 'usage_proxy_openrouter_key_limit_usd', '{organization="org"}'), 10, 'behind METRICS_API_KEY')
  const m = createMetrics(() => null, { organizationId: 'org', keyBalance: () => ({ limit: null, limitRemaining: null, usage: 3.5, at: 0 }), ownPort: true })
  const text = await scrapeHandler(m.handler)
  t.equal(sample(text, 'usage_proxy_openrouter_key_usage_usd', '{organization="org"}'), 3.5)
  t.equal(sample(text, 'usage_proxy_openrouter_key_limit_remaining_usd', '{organization="org"}'), undefined, 'unlimited: no sample rather than 0')
})

t.test('APP_URL: sent as HTTP-Referer on both paths when set, never when unset; custom task headers stay here', async (t) => {
  const s = await startSidecar(baseEnv(fake, db.url, { APP_URL: 'https://chat.example.com', TASK_HEADER: 'X-Task', MESSAGE_ID_HEADER: 'X-Msg' }))
  t.teardown(() => s.sidecar.stop('test end'))
  t.equal((await call(s, '/v1/models')).status, 200)
  t.equal(fake.requests.at(-1)!.headers['http-referer'], 'https://chat.example.com', 'passthrough')
  t.equal((await call(s, '/v1/chat/completions', { method: 'POST', headers: { ...json, 'x-task': 'title_generation', 'x-msg': 'm-9' }, body: JSON.stringify({ model: 'fake/ok', messages: [] }) })).status, 200)
  const up = fake.requests.at(-1)!
  t.equal(up.headers['http-referer'], 'https://chat.example.com', 'metered')
  t.equal(up.headers['x-task'], undefined, 'TASK_HEADER not forwarded')
  t.equal(up.headers['x-msg'], undefined, 'MESSAGE_ID_HEADER not forwarded')
  const plain = await startSidecar(baseEnv(fake, db.url))
  t.teardown(() => plain.sidecar.stop('test end'))
  t.equal((await call(plain, '/v1/models')).status, 200)
  t.equal(fake.requests.at(-1)!.headers['http-referer'], undefined, 'unset: no HTTP-Referer on passthrough')
})

t.test('a taken METRICS_PORT is named', async (t) => {
  const { createServer: netServer } = await import('node:net')
  const blocker = netServer()
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r))
  t.teardown(() => { blocker.close() })
  const port = (blocker.address() as AddressInfo).port
  const { start } = await import('../src/main.js')
  const { createLogger } = await import('../src/lib/log.js')
  const { LogSink } = await import('./support/sidecar.js')
  await t.rejects(start(baseEnv(fake, db.url, { METRICS_PORT: String(port) }), createLogger('silent', new LogSink())),
    { name: 'StartupError', message: new RegExp(`^METRICS_PORT: port ${port} on 127\\.0\\.0\\.1 is already in use`) })
})
