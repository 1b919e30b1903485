import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, TEST_KEY, type Started } from './support/sidecar.js'
import { externalUserId } from '../src/identity/external-id.js'

let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { PROXY_API_KEY: 'proxy-secret-key-1234' }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

const ORG = 'mai_client_63a4eb6d'
const auth = { authorization: 'Bearer proxy-secret-key-1234', 'content-type': 'application/json' }
const owui = (id: string, name: string) => ({
  ...auth,
  'x-openwebui-user-id': id,
  'x-openwebui-user-name': name,
  'x-openwebui-user-email': `${id}@example.com`,
  'x-openwebui-user-role': 'user',
  'x-openwebui-chat-id': `chat-${id}`,
})

async function post (path: string, body: unknown, headers: Record<string, string> = auth) {
  const res = await request(s.url + path, { method: 'POST', headers, body: JSON.stringify(body) })
  const bytes = Buffer.from(await res.body.arrayBuffer())
  return { status: res.statusCode, headers: res.headers, bytes, text: bytes.toString('utf8') }
}

/** Resolves once OpenRouter has started this user's generation (and not finished it yet, for slow models). */
async function upstreamWorking (user: string) {
  const external = externalUserId(ORG, user)
  for (;;) {
    const g = [...fake.generations.values()].find((x) => x.user === external)
    if (g) return g
    await new Promise((r) => setTimeout(r, 5))
  }
}

async function rowFor (generationId: string) {
  await settle(s.sidecar, db.sql, 0)
  for (let i = 0; i < 400; i++) {
    const rows = await db.sql`select *, cost_usd::text as cost_text, billed_cost_usd::text as billed_text from usage_events where generation_id = ${generationId}`
    if (rows.length > 0) return rows[0]
    await new Promise((r) => setTimeout(r, 25))
  }
  throw new Error(`no row for ${generationId}`)
}

t.test('non-streamed chat: body byte for byte, user rewritten, key injected, one exact row', async (t) => {
  const r = await post('/v1/chat/completions', { model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], user: 'client-supplied' }, owui('u-1', 'Jos%C3%A9 %C3%91'))
  t.equal(r.status, 200)
  const gen = JSON.parse(r.text).id as string
  t.ok(fake.sent.get(gen)!.equals(r.bytes), 'client received exactly the upstream bytes')
  const upstream = fake.requests.at(-1)!
  t.equal(upstream.headers.authorization, `Bearer ${TEST_KEY}`, 'org key replaces the proxy key')
  t.equal(upstream.headers['x-openwebui-user-email'], undefined, 'identity headers stay with the sidecar')
  t.equal(upstream.headers['http-referer'], undefined, 'APP_URL unset: no HTTP-Referer')
  t.equal(upstream.headers['x-title'], 'usage-proxy')
  const sentBody = JSON.parse(upstream.body)
  t.equal(sentBody.user, externalUserId(ORG, 'u-1'), 'user field is the external id, not what the client sent')
  t.match(sentBody.user, /^mai_client_63a4eb6d_user_[0-9a-f]{16}$/)
  const g = fake.generations.get(gen)!
  const row = await rowFor(gen)
  t.equal(row.cost_text, g.cost, 'cost to the last digit')
  t.equal(trim(row.billed_text), exactTimes(g.cost, '1.125'), 'billed = cost x (1 + 12.5/100), exact')
  t.equal(row.prompt_tokens, g.promptTokens)
  t.equal(row.completion_tokens, g.completionTokens)
  t.equal(row.total_tokens, g.promptTokens + g.completionTokens)
  t.equal(row.cached_tokens, g.cachedTokens)
  t.equal(row.reasoning_tokens, g.reasoningTokens)
  t.same([row.outcome, row.status, row.streamed, row.usage_source, row.endpoint], ['ok', 200, false, 'inline', 'chat/completions'])
  t.same([row.model, row.served_model, row.provider, row.finish_reason], ['fake/ok', 'fake/ok-2025', 'FakeProvider', 'stop'])
  t.equal(row.user_id, 'u-1')
  t.equal(row.chat_id, 'chat-u-1')
  t.equal(row.organization_id, ORG)
})

t.test('streamed chat: split reads, comments and multi-byte text pass through unchanged; usage from the last chunk', async (t) => {
  for (const model of ['fake/ok', 'fake/crlf']) {
    const r = await post('/v1/chat/completions', { model, stream: true, messages: [] }, owui('u-2', encodeURIComponent('Zoë 山田').replace(/%20/g, ' ')))
    t.equal(r.status, 200)
    t.match(r.headers['content-type'], /text\/event-stream/)
    const gen = /"id":"(gen-[^"]+)"/.exec(r.text)![1]
    t.ok(fake.sent.get(gen)!.equals(r.bytes), `${model}: stream byte for byte`)
    const sentBody = JSON.parse(fake.requests.at(-1)!.body)
    t.equal(sentBody.stream_options, undefined, 'nothing added: OpenRouter always reports usage')
    const g = fake.generations.get(gen)!
    const row = await rowFor(gen)
    t.equal(row.cost_text, g.cost)
    t.same([row.prompt_tokens, row.completion_tokens, row.cached_tokens, row.reasoning_tokens], [g.promptTokens, g.completionTokens, g.cachedTokens, g.reasoningTokens])
    t.same([row.outcome, row.streamed, row.finish_reason], ['ok', true, 'stop'])
    t.ok(Number(row.ttfb_ms) > 0 && Number(row.latency_ms) >= Number(row.ttfb_ms))
  }
})

t.test('user mapping: non-ASCII name decoded and stored, external id stable', async (t) => {
  await post('/v1/chat/completions', { model: 'fake/ok', messages: [] }, owui('u-3', 'Jos%C3%A9 %C3%91'))
  await post('/v1/chat/completions', { model: 'fake/ok', messages: [] }, owui('u-3', 'Jos%C3%A9 %C3%91'))
  const rows: any[] = await rowsSoon(() => db.sql`select * from user_mappings where user_id = 'u-3'`)
  t.equal(rows.length, 1)
  t.equal(rows[0].user_name, 'José Ñ')
  t.equal(rows[0].user_email, 'u-3@example.com')
  t.equal(rows[0].external_user_id, externalUserId(ORG, 'u-3'))
  t.ok(rows[0].external_user_id.length <= 128)
})

t.test('body user is the app user id when no headers come; none at all bills the organization', async (t) => {
  await post('/v1/chat/completions', { model: 'fake/ok', messages: [], user: 'sdk-user-7' })
  t.equal(JSON.parse(fake.requests.at(-1)!.body).user, externalUserId(ORG, 'sdk-user-7'))
  const r = await post('/api/v1/chat/completions', { model: 'fake/ok', messages: [] })
  t.equal(JSON.parse(fake.requests.at(-1)!.body).user, ORG)
  const row = await rowFor(JSON.parse(r.text).id)
  t.equal(row.external_user_id, ORG)
  t.equal(row.user_id, null)
})

t.test('other endpoints: embeddings, responses, messages', async (t) => {
  for (const [path, body] of [
    ['/v1/embeddings', { model: 'fake/embed', input: 'hello' }],
    ['/v1/responses', { model: 'fake/ok', input: 'hi' }],
    ['/v1/responses', { model: 'fake/ok', input: 'hi', stream: true }],
    ['/v1/messages', { model: 'fake/ok', max_tokens: 10, messages: [] }],
  ] as const) {
    const r = await post(path, body)
    t.equal(r.status, 200, path)
    const gen = /"id":"(gen-[^"]+)"/.exec(r.text)![1]
    const g = fake.generations.get(gen)!
    const row = await rowFor(gen)
    t.equal(row.cost_text, g.cost, `${path}: exact cost`)
    t.equal(row.prompt_tokens, g.promptTokens, `${path}: prompt tokens`)
    t.equal(row.completion_tokens, path === '/v1/embeddings' ? null : g.completionTokens, `${path}: completion tokens (embeddings report none)`)
    t.equal(row.cached_tokens, path === '/v1/embeddings' ? null : g.cachedTokens, `${path}: cached tokens`)
    t.equal(row.outcome, 'ok')
  }
})

t.test('upstream error before streaming: status and body passed on, recorded with no cost', async (t) => {
  const r = await post('/v1/chat/completions', { model: 'fake/error-402', messages: [] }, owui('u-4', 'Err'))
  t.equal(r.status, 402)
  t.equal(JSON.parse(r.text).error.code, 402)
  const rows: any[] = await rowsSoon(() => db.sql`select * from usage_events where user_id = 'u-4'`)
  t.equal(rows.length, 1)
  t.same([rows[0].outcome, rows[0].status, rows[0].cost_usd, rows[0].billed_cost_usd, rows[0].generation_id], ['upstream_error', 402, null, null, null])
  t.match(rows[0].error_message, /Insufficient credits/)
})

t.test('error mid-stream: stream passes unchanged, outcome stream_error, cost from /generation', async (t) => {
  const r = await post('/v1/chat/completions', { model: 'fake/error-mid', stream: true, messages: [] })
  const gen = /"id":"(gen-[^"]+)"/.exec(r.text)![1]
  t.ok(fake.sent.get(gen)!.equals(r.bytes))
  const row = await rowFor(gen)
  t.same([row.outcome, row.status, row.usage_source, row.finish_reason], ['stream_error', 200, 'generation', 'error'])
  t.equal(row.cost_text, '0')
  t.match(row.error_message, /Provider disconnected/)
})

t.test('stream without usage and non-JSON body: passed through, reconciled through /generation after its 404s', async (t) => {
  fake.generationDelayMs = 700
  const before = fake.generationLookups
  for (const model of ['fake/no-usage', 'fake/garbage']) {
    const r = await post('/v1/chat/completions', { model, stream: model === 'fake/no-usage', messages: [] })
    const gen = model === 'fake/garbage' ? String(r.headers['x-generation-id']) : /"id":"(gen-[^"]+)"/.exec(r.text)![1]
    t.ok(fake.sent.get(gen)!.equals(r.bytes), `${model}: unchanged`)
    const row = await rowFor(gen)
    const g = fake.generations.get(gen)!
    t.same([row.outcome, row.usage_source, row.cost_text, row.completion_tokens], ['incomplete', 'generation', g.cost, g.completionTokens], model)
  }
  t.ok(fake.generationLookups - before >= 4, 'it asked again after 404s')
  fake.generationDelayMs = 300
})

t.test('client aborts a stream: upstream aborted, billed as OpenRouter billed it', async (t) => {
  const ac = new AbortController()
  const res = await request(s.url + '/v1/chat/completions', {
    method: 'POST', headers: owui('u-5', 'Quitter'), body: JSON.stringify({ model: 'fake/slow', stream: true, messages: [] }), signal: ac.signal,
  })
  let got = ''
  let gen = ''
  try {
    for await (const c of res.body) {
      got += c.toString()
      const m = /"id":"(gen-[^"]+)"/.exec(got)
      if (m && (got.match(/data: /g) ?? []).length >= 5) { gen = m[1]; ac.abort(); break }
    }
  } catch { /* aborted */ }
  t.ok(gen, 'saw the generation')
  const row = await rowFor(gen)
  const g = fake.generations.get(gen)!
  t.equal(g.cancelled, true, 'upstream saw the abort')
  t.ok(g.completionTokens < 200, 'generation stopped early')
  t.same([row.outcome, row.usage_source, row.cost_text, row.completion_tokens, row.user_id], ['client_aborted', 'generation', g.cost, g.completionTokens, 'u-5'])
})

t.test('client leaves a non-stream request: it is read to the end unseen and billed from inline usage', async (t) => {
  const ac = new AbortController()
  void upstreamWorking('u-6').then(() => ac.abort()) // leave while OpenRouter is still composing the answer
  await t.rejects(request(s.url + '/v1/chat/completions', {
    method: 'POST', headers: owui('u-6', 'Leaver'), body: JSON.stringify({ model: 'fake/slow-complete', messages: [] }), signal: ac.signal,
  }))
  const rows: any[] = await rowsSoon(() => db.sql`select *, cost_usd::text as cost_text from usage_events where user_id = 'u-6'`)
  const g = fake.generations.get(rows[0]?.generation_id)
  t.ok(g, 'the generation id was learned after the client left')
  t.same([rows[0].outcome, rows[0].status, rows[0].usage_source, rows[0].cost_text], ['client_aborted', 499, 'inline', g!.cost])
})

t.test('client leaves a stream before its headers: upstream is aborted once they name the generation, then reconciled', async (t) => {
  const ac = new AbortController()
  void upstreamWorking('u-7').then(() => ac.abort()) // leave before OpenRouter sent its headers
  await t.rejects(request(s.url + '/v1/chat/completions', {
    method: 'POST', headers: owui('u-7', 'Early'), body: JSON.stringify({ model: 'fake/slow-start', stream: true, messages: [] }), signal: ac.signal,
  }))
  const rows: any[] = await rowsSoon(() => db.sql`select *, cost_usd::text as cost_text from usage_events where user_id = 'u-7'`)
  const g = fake.generations.get(rows[0]?.generation_id)
  t.ok(g, 'generation known')
  t.equal(g!.cancelled, true, 'upstream was aborted')
  t.same([rows[0].outcome, rows[0].usage_source, rows[0].cost_text], ['client_aborted', 'generation', g!.cost])
})

t.test('client leaves a stream whose headers do not name the generation: aborted once the first event names it', async (t) => {
  const res = await request(s.url + '/v1/chat/completions', {
    method: 'POST', headers: owui('u-8', 'Unnamed'), body: JSON.stringify({ model: 'fake/slow-unnamed', stream: true, messages: [] }),
  })
  t.equal(res.headers['x-generation-id'], undefined)
  for await (const _ of res.body) break // the first bytes (a comment), then hang up
  res.body.destroy()
  const rows: any[] = await rowsSoon(() => db.sql`select *, cost_usd::text as cost_text from usage_events where user_id = 'u-8'`)
  const g = fake.generations.get(rows[0]?.generation_id)
  t.ok(g, 'the generation id was learned from the stream before aborting')
  t.equal(g?.cancelled, true)
  t.same([rows[0]?.outcome, rows[0]?.usage_source, rows[0]?.cost_text], ['client_aborted', 'generation', g?.cost])
})

t.test('client stops reading a large non-stream answer, then leaves: the exchange still finishes and is billed', async (t) => {
  const port = Number(new URL(s.url).port)
  const body = JSON.stringify({ model: 'fake/huge-embed', input: ['x'], user: 'stalled-user' })
  const sock = (await import('node:net')).connect(port, '127.0.0.1')
  sock.pause() // never read: the sidecar's writes back up and upstream is paused
  sock.write(`POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer proxy-secret-key-1234\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
  const sent = await upstreamWorking('stalled-user')
  while (sent.completedAt === null) await new Promise((r) => setTimeout(r, 10)) // all of it sent towards the sidecar
  sock.destroy()
  const rows: any[] = await rowsSoon(() => db.sql`select *, cost_usd::text as cost_text from usage_events where user_id = 'stalled-user'`)
  const g = fake.generations.get(rows[0]?.generation_id)
  t.ok(g, 'recorded')
  t.same([rows[0]?.outcome, rows[0]?.usage_source, rows[0]?.cost_text], ['client_aborted', 'inline', g?.cost])
})

t.test('upstream dies mid-body after declaring a length: the client sees the cut instead of hanging', async (t) => {
  await t.rejects(async () => {
    const res = await request(s.url + '/v1/chat/completions', { method: 'POST', headers: auth, body: JSON.stringify({ model: 'fake/cut-json', messages: [], user: 'cut-user' }) })
    await res.body.text()
  })
  const rows: any[] = await rowsSoon(() => db.sql`select * from usage_events where user_id = 'cut-user'`)
  t.same([rows[0]?.outcome, rows[0]?.usage_source], ['incomplete', 'generation'])
})

t.test('a large JSON body is read at head and tail: exact cost without parsing megabytes', async (t) => {
  const r = await post('/v1/embeddings', { model: 'fake/big-embed', input: ['a', 'b'] })
  t.ok(r.bytes.length > 1024 * 1024, `body is ${r.bytes.length} bytes`)
  const gen = JSON.parse(r.text).id
  t.ok(fake.sent.get(gen)!.equals(r.bytes))
  const row = await rowFor(gen)
  t.same([row.cost_text, row.prompt_tokens, row.served_model, row.provider, row.outcome], [fake.generations.get(gen)!.cost, fake.generations.get(gen)!.promptTokens, 'fake/big-embed', 'FakeProvider', 'ok'])
})

t.test('routing: trailing slash, other billable endpoints and multipart are metered; the rest is refused', async (t) => {
  const slash = await post('/v1/chat/completions/', { model: 'fake/ok', messages: [], user: 'slash-user' })
  t.equal(slash.status, 200)
  t.equal(fake.requests.at(-1)!.path, '/api/v1/chat/completions')
  t.equal((await rowFor(JSON.parse(slash.text).id)).user_id, 'slash-user')
  const images = await post('/v1/images/generations', { model: 'fake/ok', prompt: 'a cat', user: 'img-user' })
  t.equal(JSON.parse(fake.requests.at(-1)!.body).user, externalUserId(ORG, 'img-user'))
  t.equal((await rowFor(JSON.parse(images.text).id)).endpoint, 'images/generations')
  const boundary = '----usageproxy'
  const multipart = `--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF\u0000\u0001data\r\n--${boundary}--\r\n`
  const audio = await request(s.url + '/v1/audio/transcriptions', {
    method: 'POST', headers: { ...owui('u-audio', 'Audio'), 'content-type': `multipart/form-data; boundary=${boundary}` }, body: multipart,
  })
  t.equal(audio.statusCode, 200)
  const gen = String(audio.headers['x-generation-id'])
  await audio.body.dump()
  const withUser = multipart.replace(`--${boundary}--`, `--${boundary}\r\nContent-Disposition: form-data; name="user"\r\n\r\n${externalUserId(ORG, 'u-audio')}\r\n--${boundary}--`)
  t.equal(fake.uploads.get(gen), withUser, 'multipart forwarded byte for byte, with the user\'s external id added')
  t.match(fake.requests.at(-1)!.headers['content-type'], /multipart\/form-data; boundary=/)
  const row = await rowFor(gen)
  t.same([row.endpoint, row.user_id, row.cost_text], ['audio/transcriptions', 'u-audio', fake.generations.get(gen)!.cost])
  const before = fake.requests.length
  for (const [method, path] of [['POST', '/v1/keys'], ['POST', '/v1/audio/anything-new'], ['PUT', '/v1/models'], ['DELETE', '/v1/chat/completions'], ['POST', '/v1/chat/../keys'], ['POST', '/v1/chat%2fcompletions']]) {
    const res = await request(s.url + path, { method: method as 'POST', headers: auth, body: '{}' })
    t.equal(res.statusCode, 404, `${method} ${path} refused`)
    t.match(await res.body.json(), { error: { type: 'not_found_error' } })
  }
  t.equal(fake.requests.length, before, 'nothing unmetered reached OpenRouter')
})

t.test('passthrough: GET /v1/models with the org key', async (t) => {
  const res = await request(s.url + '/v1/models', { headers: { authorization: 'Bearer proxy-secret-key-1234', 'x-openwebui-user-email': 'a@b.c' } })
  t.equal(res.statusCode, 200)
  const list = await res.body.json() as { data: Array<{ id: string }> }
  t.same(list.data.slice(0, -1), fake.models)
  t.equal(list.data.at(-1)?.id, 'usage-proxy/my-usage', 'and the virtual My usage model after OpenRouter\'s')
  const upstream = fake.requests.at(-1)!
  t.equal(upstream.path, '/api/v1/models')
  t.equal(upstream.headers.authorization, `Bearer ${TEST_KEY}`)
  t.equal(upstream.headers['x-openwebui-user-email'], undefined)
})

t.test('bad input: OpenAI-style errors, nothing forwarded', async (t) => {
  const count = fake.requests.length
  const bad = await request(s.url + '/v1/chat/completions', { method: 'POST', headers: auth, body: '{not json' })
  t.equal(bad.statusCode, 400)
  t.match(await bad.body.json(), { error: { type: 'invalid_request_error', code: 'invalid_json', message: String } })
  const noKey = await request(s.url + '/v1/chat/completions', { method: 'POST', body: '{}' })
  t.equal(noKey.statusCode, 401)
  t.match(await noKey.body.json(), { error: { type: 'authentication_error' } })
  const wrongKey = await request(s.url + '/v1/models', { headers: { authorization: 'Bearer nope' } })
  t.equal(wrongKey.statusCode, 401)
  await wrongKey.body.dump()
  const nowhere = await request(s.url + '/v2/chat/completions', { method: 'POST', headers: auth, body: '{}' })
  t.equal(nowhere.statusCode, 404)
  t.match(await nowhere.body.json(), { error: { type: 'not_found_error' } })
  t.equal(fake.requests.length, count, 'nothing reached OpenRouter')
})

t.test('metrics: Prometheus text with requests, outcomes, tokens and ledger gauges', async (t) => {
  const res = await request(s.url + '/metrics')
  t.equal(res.statusCode, 200)
  const text = await res.body.text()
  t.match(text, /usage_proxy_requests_total\{route="chat\/completions",status="200"\} \d+/)
  t.match(text, /usage_proxy_requests_total\{route="passthrough",status="200"\} [1-9]/)
  t.match(text, /usage_proxy_outcomes_total\{outcome="client_aborted"\} [1-9]/)
  t.match(text, /usage_proxy_tokens_total\{model="fake\/ok-2025",type="prompt"\} \d+/)
  t.match(text, /usage_proxy_upstream_ttfb_seconds_bucket/)
  t.match(text, /usage_proxy_ledger_queue_depth \d+/)
  t.match(text, /usage_proxy_journal_backlog \d+/)
  t.match(text, /usage_proxy_reconciled_total [1-9]/)
})

t.test('health and readiness', async (t) => {
  const h = await request(s.url + '/healthz')
  t.equal(h.statusCode, 200)
  await h.body.dump()
  const r = await request(s.url + '/readyz')
  t.equal(r.statusCode, 200)
  await r.body.dump()
})

t.test('every row matches what OpenRouter charged, and secrets stay out of logs and the database', async (t) => {
  const served = [...fake.generations.values()].filter((g) => g.completedAt !== null)
  await settle(s.sidecar, db.sql, served.length)
  const [{ total }] = await db.sql`select coalesce(sum(cost_usd), 0)::text as total from usage_events where generation_id is not null`
  t.equal(total.replace(/\.?0+$/, ''), sumDecimals(served.map((g) => g.cost)), 'sum of rows == sum charged, exactly')
  const [{ n, distinct }] = await db.sql`select count(*)::int as n, count(distinct generation_id)::int as distinct from usage_events where generation_id is not null`
  t.equal(n, served.length, 'one row per generation')
  t.equal(distinct, n)
  t.notOk(s.logs.text.includes(TEST_KEY), 'OpenRouter key not in logs')
  t.notOk(s.logs.text.includes('proxy-secret-key-1234'), 'proxy key not in logs')
  const dump = await db.sql`select row_to_json(o)::text as j from organizations o union all select row_to_json(e)::text from usage_events e union all select row_to_json(m)::text from user_mappings m`
  t.notOk(dump.some((r) => r.j.includes(TEST_KEY) || r.j.includes('test-key')), 'key not in the database')
  const [org] = await db.sql`select * from organizations`
  t.match(org.api_key_fingerprint, /^sha256:[0-9a-f]{16}$/)
})

function exactTimes (a: string, b: string): string {
  const scale = (x: string) => (x.split('.')[1] ?? '').length
  const int = (x: string) => BigInt(x.replace('.', ''))
  const p = (int(a) * int(b)).toString()
  const sc = scale(a) + scale(b)
  const s = p.padStart(sc + 1, '0')
  return `${s.slice(0, -sc)}.${s.slice(-sc)}`.replace(/0+$/, '').replace(/\.$/, '')
}

function trim (x: string): string { return x.includes('.') ? x.replace(/0+$/, '').replace(/\.$/, '') : x }
