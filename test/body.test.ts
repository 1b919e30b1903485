import t, { type Test } from 'tap'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import { createServer, type ServerResponse } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { Pool, request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { freePort, spawnSidecar } from './support/child.js'
import { externalUserId } from '../src/identity/external-id.js'
import { createLogger } from '../src/lib/log.js'
import { handleMetered, type MeterContext } from '../src/proxy/metered.js'

// The request body path: bodies built to take the process down or hold the event loop,
// multipart uploads whose `user` the client must not choose, and the rule that an exception in
// one exchange answers that exchange.

let fake: FakeOpenRouter
let db: TestDb
let s: Started
const ORG = 'mai_client_63a4eb6d'
const json = { 'content-type': 'application/json' }
const owui = (id: string) => ({ 'x-openwebui-user-id': id, 'x-openwebui-user-name': id })

t.before(async () => {
  fake = await new FakeOpenRouter(8).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function post (url: string, body: string | Buffer, headers: Record<string, string> = json) {
  const res = await request(url, { method: 'POST', headers, body })
  return { status: res.statusCode, headers: res.headers, text: await res.body.text() }
}

t.test('a small body nested 5,000 levels deep is answered, and the process lives on', async (t) => {
  const child = spawnSidecar({ ...baseEnv(fake, db.url), LOG_LEVEL: 'info' }, await freePort())
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady()
  const n = 5000
  const deep = `{"model":"m","messages":[],"x":${'['.repeat(n)}${']'.repeat(n)}}`
  t.ok(deep.length >= 10_000 && deep.length < 11_000, `about 10 KB (${deep.length} bytes)`)
  const r = await post(`${child.url}/v1/chat/completions`, deep, { ...json, ...owui('deep-user') })
  t.equal(r.status, 200, 'forwarded: it is valid JSON')
  const sent = fake.requests.at(-1)!.body
  t.equal(sent, deep.slice(0, -1) + `,"user":"${externalUserId(ORG, 'deep-user')}"}`, 'forwarded as sent, only the user added')
  const deeper = `{"model":"m","x":${'{"a":'.repeat(200_000)}1${'}'.repeat(200_000)}}`
  t.equal((await post(`${child.url}/v1/chat/completions`, deeper)).status, 200, '200,000 nested objects too')
  const broken = `{"model":"m","x":${'['.repeat(n)}}`
  const bad = await post(`${child.url}/v1/chat/completions`, broken)
  t.equal(bad.status, 400)
  t.match(JSON.parse(bad.text), { error: { code: 'invalid_json', type: 'invalid_request_error' } })
  const health = await request(`${child.url}/healthz`)
  t.equal(health.statusCode, 200)
  await health.body.dump()
  t.equal(child.proc.exitCode, null, 'still running')
  t.notOk(child.logs().some((l) => l.level >= 50), 'nothing logged as an error')
})

/**
 * The bytes of `Array.from({ length: n }, (_, i) => String((i * 7919) % 1_000_003 / 8)).join(',')`,
 * written straight into a buffer: k / 8 is k >> 3 followed by one of eight fractions, as String()
 * writes it. Millions of short strings and their join cost a second of CPU and as much in GC.
 */
function numberList (n: number): Buffer {
  const fractions = ['', '.125', '.25', '.375', '.5', '.625', '.75', '.875'].map((f) => [...Buffer.from(f)])
  const out = Buffer.allocUnsafe(n * 12)
  let at = 0
  for (let i = 0; i < n; i++) {
    if (i > 0) out[at++] = 0x2c
    const k = (i * 7919) % 1_000_003
    at = writeInt(out, at, k >> 3)
    for (const c of fractions[k & 7]) out[at++] = c
  }
  return out.subarray(0, at)
}

/** The bytes of `Array.from({ length: n }, (_, i) => `"k${i}":${i}`).join(',')`, written as numberList's. */
function keyList (n: number): Buffer {
  const out = Buffer.allocUnsafe(n * 20)
  let at = 0
  for (let i = 0; i < n; i++) {
    if (i > 0) out[at++] = 0x2c
    out[at++] = 0x22
    out[at++] = 0x6b
    at = writeInt(out, at, i)
    out[at++] = 0x22
    out[at++] = 0x3a
    at = writeInt(out, at, i)
  }
  return out.subarray(0, at)
}

const digits = Buffer.alloc(16)
/** Writes a non-negative integer's decimal digits at `at`; returns where they end. */
function writeInt (out: Buffer, at: number, v: number): number {
  let d = 0
  do { digits[d++] = 0x30 + v % 10; v = Math.floor(v / 10) } while (v > 0)
  while (d > 0) out[at++] = digits[--d]
  return at
}

t.test('numberList and keyList write what String() and join would', async (t) => {
  t.equal(numberList(5000).toString(), Array.from({ length: 5000 }, (_, i) => String((i * 7919) % 1_000_003 / 8)).join(','))
  t.equal(keyList(5000).toString(), Array.from({ length: 5000 }, (_, i) => `"k${i}":${i}`).join(','))
})

t.test('requests are served while an 18 MB numeric body is scanned: it is read a slice per turn, not in one block', async (t) => {
  // The fake reads the model without JSON.parse (18 MB of it was most of its work): the body it
  // got is compared byte for byte below instead.
  fake.shallowOver = 1024 * 1024
  t.teardown(() => { fake.shallowOver = Infinity })
  const big = Buffer.concat([Buffer.from('{"model":"fake/ok","messages":[{"role":"user","content":"hi"}],"x":['), numberList(2_300_000), Buffer.from(']}')])
  t.ok(big.length > 18 * 1024 * 1024, `${(big.length / 1048576).toFixed(1)} MB`)
  const upstreamPath = '/api/v1/chat/completions'
  let served = 0
  let servedWhenDispatched = -1
  let sending = false
  // The sidecar dispatches the big request once it has read all of it: that instant is observed
  // through undici's own channel, in this process, so no clock is involved.
  const onCreate = (m: unknown) => {
    const req = (m as { request: { path: string, method: string } }).request
    if (sending && servedWhenDispatched === -1 && req.method === 'POST' && req.path === upstreamPath) servedWhenDispatched = served
  }
  subscribe('undici:request:create', onCreate)
  t.teardown(() => unsubscribe('undici:request:create', onCreate))
  // Once the sidecar has the whole body (its own 'end' listener ran first), health checks start.
  let pinging: Promise<void> | null = null
  const onRequest = (req: import('node:http').IncomingMessage) => {
    if (req.headers['x-test'] !== 'big') return
    req.once('end', () => {
      pinging = (async () => {
        while (servedWhenDispatched === -1) {
          const h = await request(`${s.url}/healthz`)
          await h.body.dump()
          if (h.statusCode === 200) served++
        }
      })()
    })
  }
  s.sidecar.server.on('request', onRequest)
  t.teardown(() => { s.sidecar.server.off('request', onRequest) })
  sending = true
  const r = await post(`${s.url}/v1/chat/completions`, big, { ...json, 'x-test': 'big' })
  await pinging
  t.equal(r.status, 200)
  t.ok(servedWhenDispatched >= 2, `health checks answered while the body was scanned (${servedWhenDispatched})`)
  const sent = fake.requests.find((q) => q.headers['x-test'] === 'big')!
  t.equal(sent.body.length, big.length + `,"user":"${ORG}"`.length, 'the whole body went upstream, plus the user')
  t.ok(sent.body === big.toString('latin1', 0, big.length - 1) + `,"user":"${ORG}"}`, 'byte for byte as sent, the user added before the last brace')
})

/**
 * Sends `big` while another client keeps asking (health checks, one after the other; every
 * eighth a small "My usage" chat, which reads the database), from the moment the sidecar has the whole big body until it is done with it
 * (`dispatched`: it went upstream; else: its answer arrived). Returns what the other client got
 * in that window, and how often the sidecar handed the big request's text to JSON.parse.
 */
async function othersServedWhile (t: Test, big: Buffer, marker: string, dispatched: boolean) {
  const upstreamPath = '/api/v1/chat/completions'
  let served = 0
  let servedWhenDone = -1
  let sending = false
  const onCreate = (m: unknown) => {
    const req = (m as { request: { path: string, method: string, headers: unknown } }).request
    if (dispatched && sending && servedWhenDone === -1 && req.method === 'POST' && req.path === upstreamPath && JSON.stringify(req.headers).includes('big')) servedWhenDone = served
  }
  subscribe('undici:request:create', onCreate)
  t.teardown(() => unsubscribe('undici:request:create', onCreate))
  // The rule for the request path: no client byte goes to JSON.parse (the fake's own parse aside).
  const parse = JSON.parse
  let parsed = 0
  JSON.parse = function (text: string, reviver?: (this: unknown, key: string, value: unknown) => unknown) {
    if (typeof text === 'string' && text.includes(marker) && !(new Error().stack ?? '').includes('fake-openrouter')) parsed++
    return parse.call(JSON, text, reviver)
  } as typeof JSON.parse
  t.teardown(() => { JSON.parse = parse })
  let pinging: Promise<void> | null = null
  const small = JSON.stringify({ model: 'usage-proxy/my-usage', messages: [{ role: 'user', content: 'how much?' }] })
  const onRequest = (req: import('node:http').IncomingMessage) => {
    if (req.headers['x-test'] !== 'big') return
    req.once('end', () => {
      pinging = (async () => {
        for (let k = 0; servedWhenDone === -1; k++) {
          const r = k % 8 !== 7
            ? await request(`${s.url}/healthz`)
            : await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { ...json, ...owui('other-client') }, body: small })
          const text = await r.body.text()
          if (r.statusCode === 200 && (k % 8 !== 7 || text.includes('chat.completion'))) served++
        }
      })()
    })
  }
  s.sidecar.server.on('request', onRequest)
  t.teardown(() => { s.sidecar.server.off('request', onRequest) })
  sending = true
  const r = await post(`${s.url}/v1/chat/completions`, big, { ...json, ...owui('big-user'), 'x-test': 'big' })
  if (!dispatched) servedWhenDone = served
  await pinging
  return { status: r.status, text: r.text, served: servedWhenDone, parsed }
}

const TASK = '### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.'

t.test('a 6 MB first message nested millions deep: the others are answered meanwhile, the message is never parsed, the task still found', async (t) => {
  fake.shallowOver = 1024 * 1024
  t.teardown(() => { fake.shallowOver = Infinity })
  const n = 3_000_000
  const marker = 'nested-6mb-marker'
  const nested = Buffer.from(`${'['.repeat(n)}${']'.repeat(n)}`) // the same bytes for both models
  for (const model of ['fake/ok', 'usage-proxy/my-usage']) {
    const big = Buffer.concat([Buffer.from(`{"model":"${model}","messages":[{"role":"user","content":"${TASK.replace('\n', '\\n')} ${marker}","x":`), nested, Buffer.from('}]}')])
    t.ok(big.length >= 6_000_000, `${(big.length / 1e6).toFixed(1)} MB`)
    const r = await othersServedWhile(t, big, marker, model === 'fake/ok')
    t.equal(r.status, 200, model)
    t.ok(r.served >= 2, `${model}: the other client was answered while it was read (${r.served})`)
    t.equal(r.parsed, 0, `${model}: JSON.parse never saw the client's bytes`)
    if (model === 'usage-proxy/my-usage') t.equal(JSON.parse(JSON.parse(r.text).choices[0].message.content).title, 'My usage', 'My usage saw a task prompt')
  }
  const rows = await rowsSoon(() => db.sql<Array<{ kind: string }>>`select kind from usage_events where user_id = 'big-user'`)
  t.same(rows.map((x) => x.kind), ['title_generation'], 'classified from the start of the first message')
})

t.test('a first message of one object with a million keys: the others are answered meanwhile, nothing parsed', async (t) => {
  fake.shallowOver = 1024 * 1024
  t.teardown(() => { fake.shallowOver = Infinity })
  const marker = 'million-keys-marker'
  const keys = keyList(1_000_000) // the same bytes for both models
  for (const model of ['fake/ok', 'usage-proxy/my-usage']) {
    const big = Buffer.concat([Buffer.from(`{"model":"${model}","messages":[{`), keys, Buffer.from(`,"role":"user","content":"${TASK.replace('\n', '\\n')} ${marker}"}]}`)])
    const r = await othersServedWhile(t, big, marker, model === 'fake/ok')
    t.equal(r.status, 200, model)
    t.ok(r.served >= 2, `${model}: the other client was answered while it was read (${r.served})`)
    t.equal(r.parsed, 0, `${model}: JSON.parse never saw the client's bytes`)
    if (model === 'usage-proxy/my-usage') t.equal(JSON.parse(JSON.parse(r.text).choices[0].message.content).title, 'My usage', 'My usage saw a task prompt')
  }
  const rows = await rowsSoon(async () => {
    const got = await db.sql<Array<{ kind: string }>>`select kind from usage_events where user_id = 'big-user'`
    return got.length >= 2 ? got : []
  })
  t.same(rows.map((x) => x.kind), ['title_generation', 'title_generation'])
})

t.test('multipart uploads: the user field is the user\'s external id, whatever the client put there', async (t) => {
  const file = Buffer.concat([Buffer.from('RIFF'), Buffer.from([0, 1, 2, 0xff, 0xfe, 13, 10, 45, 45]), Buffer.from('\r\n--not-the-boundary\r\nname="user"\r\n'), Buffer.alloc(70_000, 7)])
  for (const endpoint of ['audio/transcriptions', 'audio/translations', 'images/edits', 'images/variations']) {
    // Encoded by the platform's own fetch (Response), then sent as bytes: npm undici's request()
    // stalls on a FormData holding Node 24's Blob, a client-side interop gap, not the sidecar's.
    const form = new FormData()
    form.append('model', 'openai/whisper-1')
    form.append('user', 'another-orgs-external-id')
    form.append('file', new Blob([file], { type: 'application/octet-stream' }), 'a.wav')
    const encoded = new Response(form)
    const body = Buffer.from(await encoded.arrayBuffer())
    const res = await request(`${s.url}/v1/${endpoint}`, { method: 'POST', headers: { ...owui('mp-user'), 'content-type': encoded.headers.get('content-type')! }, body })
    t.equal(res.statusCode, 200, endpoint)
    const gen = String(res.headers['x-generation-id'])
    await res.body.dump()
    // Read back what OpenRouter received with a parser that is not ours (undici's).
    const got = fake.uploadBytes.get(gen)!
    const parsed = await new Response(new Uint8Array(got), { headers: { 'content-type': String(fake.requests.at(-1)!.headers['content-type']) } }).formData()
    t.same(parsed.getAll('user'), [externalUserId(ORG, 'mp-user')], `${endpoint}: only our user`)
    t.equal(parsed.get('model'), 'openai/whisper-1')
    t.ok(Buffer.from(await (parsed.get('file') as Blob).arrayBuffer()).equals(file), `${endpoint}: the file byte for byte`)
  }
})

t.test('multipart: duplicate user fields all replaced, a missing one added, a lower-case header caught', async (t) => {
  const b = 'XyZ-boundary'
  const part = (headers: string, content: string) => `--${b}\r\n${headers}\r\n\r\n${content}\r\n`
  const ext = externalUserId(ORG, 'dup-user')
  const cases: Array<[string, string, string[]]> = [
    ['two user parts', part('Content-Disposition: form-data; name="user"', 'a') + part('Content-Disposition: form-data; name="model"', 'm') + part('content-disposition: form-data; name="user"', 'b') + `--${b}--\r\n`, [ext, ext]],
    ['no user part', part('Content-Disposition: form-data; name="model"', 'm') + `--${b}--`, [ext]],
  ]
  for (const [name, body, users] of cases) {
    const ct = `multipart/form-data; boundary="${b}"`
    const res = await request(`${s.url}/v1/audio/transcriptions`, { method: 'POST', headers: { ...owui('dup-user'), 'content-type': ct }, body })
    t.equal(res.statusCode, 200, name)
    const gen = String(res.headers['x-generation-id'])
    await res.body.dump()
    const parsed = await new Response(new Uint8Array(fake.uploadBytes.get(gen)!), { headers: { 'content-type': ct } }).formData()
    t.same(parsed.getAll('user'), users, name)
  }
  // An epilogue (after the closing delimiter) is left alone; undici's parser does not take one.
  const epilogue = part('Content-Disposition: form-data; name="user"', 'z') + `--${b}--\r\nepilogue "user"`
  const res = await request(`${s.url}/v1/audio/transcriptions`, { method: 'POST', headers: { ...owui('dup-user'), 'content-type': `multipart/form-data; boundary=${b}` }, body: epilogue })
  t.equal(res.statusCode, 200)
  await res.body.dump()
  t.equal(fake.uploads.get(String(res.headers['x-generation-id'])), epilogue.replace('\r\n\r\nz\r\n', `\r\n\r\n${ext}\r\n`))
  const rows: any[] = []
  for (let i = 0; i < 200 && rows.length < 3; i++) {
    rows.splice(0, rows.length, ...await db.sql`select user_id from usage_events where external_user_id = ${ext}`)
    if (rows.length < 3) await new Promise((r) => setTimeout(r, 25))
  }
  t.same(rows.map((r) => r.user_id), ['dup-user', 'dup-user', 'dup-user'], 'recorded for the user')
})

t.test('upload endpoints: other bodies are refused and nothing is forwarded', async (t) => {
  const before = fake.requests.length
  const cases: Array<[string, string, string, number, string]> = [
    ['raw audio', 'audio/mpeg', 'ID3....', 415, 'unsupported_media_type'],
    ['urlencoded with a user', 'application/x-www-form-urlencoded', 'user=someone&model=m', 415, 'unsupported_media_type'],
    ['multipart without a boundary', 'multipart/form-data', '--x\r\n\r\n\r\n--x--', 415, 'unsupported_media_type'],
    ['multipart with a preamble', 'multipart/form-data; boundary=x', 'hello\r\n--x\r\nContent-Disposition: form-data; name="user"\r\n\r\nme\r\n--x--', 400, 'invalid_multipart'],
    ['multipart without its closing delimiter', 'multipart/form-data; boundary=x', '--x\r\nContent-Disposition: form-data; name="user"\r\n\r\nme', 400, 'invalid_multipart'],
    ['multipart with a header line that is not one', 'multipart/form-data; boundary=x', '--x\r\nContent-Disposition: form-data; name="a"\r\n--x\r\nContent-Disposition: form-data; name="user"\r\n\r\nme\r\n--x--', 400, 'invalid_multipart'],
    ['multipart with a boundary look-alike line', 'multipart/form-data; boundary=x', '--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--xy\r\n--x--', 400, 'invalid_multipart'],
    ['multipart with the boundary twice', 'multipart/form-data; boundary=x; boundary=y', '--y\r\nContent-Disposition: form-data; name="user"\r\n\r\nme\r\n--y--', 400, 'invalid_multipart'],
    ['multipart with the boundary twice, in another case', 'multipart/form-data; boundary=x; BOUNDARY="x"', '--x\r\nContent-Disposition: form-data; name="user"\r\n\r\nme\r\n--x--', 400, 'invalid_multipart'],
    ['a part named twice', 'multipart/form-data; boundary=x', '--x\r\nContent-Disposition: form-data; name="file"; name="user"\r\n\r\nme\r\n--x--', 400, 'invalid_multipart'],
    ['a part named twice, in another case', 'multipart/form-data; boundary=x', '--x\r\nContent-Disposition: form-data; name="user"; NAME=file\r\n\r\nme\r\n--x--', 400, 'invalid_multipart'],
    ['a JSON body that is not an object', 'application/json', '[1]', 400, 'invalid_json'],
  ]
  for (const [name, type, body, status, code] of cases) {
    const r = await post(`${s.url}/v1/audio/transcriptions`, body, { 'content-type': type })
    t.equal(r.status, status, name)
    t.match(JSON.parse(r.text), { error: { code, type: 'invalid_request_error', message: String } }, name)
  }
  t.equal(fake.requests.length, before, 'nothing reached OpenRouter')
  // A JSON body on an upload endpoint is still JSON: its user is rewritten the same way.
  const r = await post(`${s.url}/v1/images/edits`, '{"model":"m","user":"someone"}', { ...json, ...owui('json-upload') })
  t.equal(r.status, 200)
  t.equal(JSON.parse(fake.requests.at(-1)!.body).user, externalUserId(ORG, 'json-upload'))
})

/** The fixed part of a hand-built MeterContext for tests that drive handleMetered directly. */
function meterBase (pool: Pool) {
  return {
    upstream: { pool, basePath: '/api/v1' },
    headers: { apiKey: 'sk-or-v1-test-key-0123456789', appUrl: 'http://x', appTitle: 't', identityHeaders: new Set<string>() },
    rules: { organizationId: ORG, markupPercent: '0', maxBodyBytes: 1_000_000, identity: s.sidecar.config.identity },
    limits: { needsAdmission: () => false },
  }
}

/**
 * A ledger that keeps nothing. The intent line's write before dispatch passes at once; `onEnd`
 * gets the write each answer's end waits for (the record's), which tests hold or stall.
 */
function fakeLedger (onEnd: (then: () => void) => void, record: () => void = () => {}) {
  let intent = false
  return {
    pending: () => {},
    record,
    intent: () => { intent = true },
    withdraw: () => {},
    afterJournal: (then: () => void) => { if (intent) { intent = false; then() } else onEnd(then) },
  }
}

t.test('an exception before dispatch answers 500 for that request only', async (t) => {
  const pool = new Pool(`http://127.0.0.1:${fake.port}`)
  t.teardown(() => pool.close())
  let calls = 0
  const ctx = {
    ...meterBase(pool),
    // A fault injected where a bug would be: the user directory throws on its second use.
    directory: { resolve: () => { if (++calls === 2) throw new TypeError('injected'); return { userId: null, externalUserId: ORG, mapping: null } } },
    ledger: fakeLedger((then) => then()),
    reconciler: { enqueue: () => {} },
    log: createLogger('fatal'),
    track: () => {},
  } as unknown as MeterContext
  const server = createServer((req, res) => handleMetered(req, res, 'chat/completions', '', 'json', ctx))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => server.close())
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`
  const statuses: number[] = []
  for (let i = 0; i < 3; i++) {
    const r = await post(url, '{"model":"fake/ok","messages":[]}')
    statuses.push(r.status)
    if (r.status === 500) t.match(JSON.parse(r.text), { error: { type: 'api_error', code: 'internal_error', message: String } })
  }
  t.same(statuses, [200, 500, 200])
})

t.test('a response ends only once the journal has written its record (group commit)', async (t) => {
  const pool = new Pool(`http://127.0.0.1:${fake.port}`)
  t.teardown(() => pool.close())
  let last: ServerResponse | null = null
  const held: Array<() => void> = []
  const endedWhenHeld: boolean[] = []
  // Writes waited for before the record was handed over (the pending line's).
  const early: Array<() => void> = []
  let recorded = false
  const ctx = {
    ...meterBase(pool),
    directory: { resolve: () => ({ userId: null, externalUserId: ORG, mapping: null }) },
    // The journal's write at the end of the turn, held until the test lets it happen.
    ledger: fakeLedger((then) => {
      if (!recorded) { early.push(then); return }
      endedWhenHeld.push(last!.writableEnded)
      held.push(then)
    }, () => { recorded = true }),
    // A record without a cost goes to the reconciler instead: handed over all the same.
    reconciler: { enqueue: () => { recorded = true } },
    log: createLogger('fatal'),
    track: () => {},
  } as unknown as MeterContext
  // Body bytes the exchange handed to the client's response before its end, counted server-side.
  let written = 0
  const server = createServer((req, res) => {
    last = res
    written = 0
    const write = res.write.bind(res) as (chunk: unknown, ...rest: unknown[]) => boolean
    res.write = ((chunk: string | Buffer, ...rest: unknown[]) => { written += Buffer.byteLength(chunk); return write(chunk, ...rest) }) as typeof res.write
    handleMetered(req, res, 'chat/completions', '', 'json', ctx)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => server.close())
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`
  // fake/sized declares its length: the client holds a complete answer once that many bytes are
  // out, whether or not res.end was called, so its last chunk must wait for the journal too.
  // fake/slow: the stream's events come in many reads, all while the pending line's write is held.
  const lastGeneration = () => [...fake.generations.values()].at(-1)
  const pace = fake.slowEventMs
  fake.slowEventMs = 1 // fake/slow's 200 events in a few hundred reads
  t.teardown(() => { fake.slowEventMs = pace })
  for (const [model, stream] of [['fake/ok', false], ['fake/ok', true], ['fake/sized', false], ['fake/slow', true]] as const) {
    held.length = 0
    early.length = 0
    recorded = false
    const answer = post(url, JSON.stringify({ model, stream, messages: [] }))
    const deadline = Date.now() + 10_000
    while (held.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
    if (stream) {
      // Every byte arrived while the pending line's write was held: none may have reached the client.
      t.equal(early.length, 1, `${model} stream=${stream}: its pending line's write was waited for`)
      t.equal(written, 0, `${model} stream=${stream}: no body byte before the line naming its generation is written`)
    }
    for (const then of early.splice(0)) then() // the journal's writes happen in order: the pending line's first
    t.equal(held.length, 1, `${model} stream=${stream}: the end waits for the journal`)
    t.same(endedWhenHeld.splice(0), [false], 'the response was still open when its record was handed to the journal')
    t.equal(last!.writableEnded, false, 'and stays open while the write is held')
    const writtenWhenHeld = written
    held[0]()
    const r = await answer
    t.equal(r.status, 200)
    t.equal(last!.writableEnded, true, 'ended once the write happened')
    if (model === 'fake/slow') t.equal(r.text, fake.sent.get(lastGeneration()!.id)?.toString(), 'every held chunk reached the client, in order')
    if (model === 'fake/sized') {
      const declared = Number(r.headers['content-length'])
      t.equal(Buffer.byteLength(r.text), declared, 'the client got every declared byte')
      t.ok(writtenWhenHeld < declared, `but not all of them while the write was held (${writtenWhenHeld} of ${declared} written)`)
    }
  }
  // The error paths (onError) wait for the write too: a stream whose upstream connection dies
  // mid-way (its chunked body is closed), and an upstream that cannot be reached (502).
  const unreachable = new Pool(`http://127.0.0.1:${await freePort()}`)
  t.teardown(() => unreachable.close())
  for (const c of [{ model: 'fake/cut-stream', pool, status: 200 }, { model: 'fake/ok', pool: unreachable, status: 502 }]) {
    held.length = 0
    early.length = 0
    recorded = false
    ctx.upstream.pool = c.pool
    let answered = false
    const answer = post(url, JSON.stringify({ model: c.model, stream: true, messages: [] })).finally(() => { answered = true })
    const deadline = Date.now() + 10_000
    while (held.length === 0 && !answered && Date.now() < deadline) {
      if (early.length > 0) early.shift()!()
      await new Promise((r) => setTimeout(r, 5))
    }
    t.equal(held.length, 1, `${c.status}: the error answer waits for the journal`)
    t.same(endedWhenHeld.splice(0), [false], 'the response was still open when its record was handed to the journal')
    t.equal(last!.writableEnded, false, 'and stays open while the write is held')
    for (const then of early.splice(0)) then()
    held[0]?.()
    const r = await answer
    t.equal(r.status, c.status)
    t.equal(last!.writableEnded, true, 'answered once the write happened')
  }
})

t.test('an exchange counts as over for a graceful stop only once its response has left, not when it was ended', async (t) => {
  const pool = new Pool(`http://127.0.0.1:${fake.port}`)
  t.teardown(() => pool.close())
  const seen: { res: ServerResponse | null } = { res: null }
  const stalled: Array<() => void> = []
  const stall = (socket: Socket): void => {
    const w = socket as unknown as Record<'_write' | '_writev', (...a: unknown[]) => void>
    for (const k of ['_write', '_writev'] as const) {
      const own = w[k]
      w[k] = (...a: unknown[]) => { stalled.push(() => { w[k] = own; own.apply(socket, a) }) }
    }
  }
  let inFlight = 0
  let recorded = false
  const ctx = {
    ...meterBase(pool),
    directory: { resolve: () => ({ userId: null, externalUserId: ORG, mapping: null }) },
    // A slow client, as the process sees it: from the journal's write of the record on, its
    // socket's writes wait (the kernel's buffer is full), so the answer's last bytes are still in
    // the process. (A pending line's write before it passes as it comes.)
    ledger: fakeLedger((then) => { if (recorded) stall(seen.res!.socket!); then() }, () => { recorded = true }),
    reconciler: { enqueue: () => {} },
    log: createLogger('fatal'),
    track: (d: 1 | -1) => { inFlight += d },
  } as unknown as MeterContext
  const server = createServer((req, res) => { seen.res = res; handleMetered(req, res, 'chat/completions', '', 'json', ctx) })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => server.close())
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`
  for (const c of [{ model: 'fake/sized', stream: false }, { model: 'fake/ok', stream: true }]) {
    recorded = false
    let answered = false
    const answer = post(url, JSON.stringify({ model: c.model, stream: c.stream, messages: [] })).finally(() => { answered = true })
    const deadline = Date.now() + 10_000
    while (stalled.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
    t.equal(seen.res!.writableEnded, true, `${c.model}: ended`)
    t.equal(answered, false, 'its last bytes have not left')
    t.equal(inFlight, 1, 'so a graceful stop still waits for it')
    for (const go of stalled.splice(0)) go()
    const r = await answer
    t.equal(r.status, 200)
    t.equal(inFlight, 0, 'over once the bytes left')
    seen.res = null
  }
})


t.test('declared-length answers arrive whole and exactly once, a small one and one in many reads, back to back on one connection', async (t) => {
  // The exchange holds the last chunk of such an answer until its record is written. Every other
  // chunk goes out as it comes; the held one goes out once, with the end. A byte too many would
  // land in front of the next answer on the same connection.
  const client = new Pool(s.url, { connections: 1 })
  t.teardown(() => client.close())
  for (const model of ['fake/sized-embed', 'fake/sized', 'fake/sized-embed', 'fake/ok']) {
    const res = await client.request({ path: '/v1/chat/completions', method: 'POST', headers: json, body: JSON.stringify({ model, messages: [] }) })
    const body = Buffer.from(await res.body.arrayBuffer())
    t.equal(res.statusCode, 200, model)
    const id = JSON.parse(body.toString()).id as string
    t.ok(fake.sent.get(id)?.equals(body), `${model}: the body as OpenRouter sent it (${body.length} bytes)`)
    if (model !== 'fake/ok') t.equal(Number(res.headers['content-length']), body.length, `${model}: as long as declared`)
  }
  // undici drops a connection that sends bytes nobody asked for and quietly opens another: read
  // the raw connection, where a byte too many shows in front of the next answer.
  const raw = connect(s.sidecar.port, '127.0.0.1')
  t.teardown(() => raw.destroy())
  let got = Buffer.alloc(0)
  raw.on('data', (d: Buffer) => { got = Buffer.concat([got, d]) })
  let at = 0
  for (const model of ['fake/sized-embed', 'fake/sized', 'fake/sized-embed']) {
    const body = JSON.stringify({ model, messages: [] })
    raw.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
    let end = -1
    const deadline = Date.now() + 10_000
    while (Date.now() < deadline) {
      const head = got.indexOf('\r\n\r\n', at)
      const length = head < 0 ? NaN : Number(/content-length: (\d+)/i.exec(got.subarray(at, head).toString('latin1'))?.[1])
      if (head >= 0 && got.length >= head + 4 + length) { end = head + 4 + length; break }
      await new Promise((r) => setTimeout(r, 5))
    }
    t.ok(end > 0, `${model}: a whole answer on the raw connection`)
    t.equal(got.subarray(at, at + 9).toString('latin1'), 'HTTP/1.1 ', `${model}: the answer starts where the last one ended`)
    at = end
  }
})

t.test('an exchange is observed (metrics, access line) once, after its answer, and only when the ledger took its record', async (t) => {
  const pool = new Pool(`http://127.0.0.1:${fake.port}`)
  t.teardown(() => pool.close())
  let refuse = false
  const seen: Array<{ status: number, outcome: string, ended: boolean }> = []
  const ctx = {
    ...meterBase(pool),
    directory: { resolve: () => ({ userId: null, externalUserId: ORG, mapping: null }) },
    ledger: fakeLedger((then) => then(), () => { if (refuse) throw new Error('injected ledger fault') }),
    reconciler: { enqueue: () => {} },
    log: createLogger('fatal'),
    track: () => {},
    observe: (rec: { status: number, outcome: string }, res: ServerResponse) => { seen.push({ status: rec.status, outcome: rec.outcome, ended: res.writableEnded }) },
  } as unknown as MeterContext
  const server = createServer((req, res) => handleMetered(req, res, 'chat/completions', '', 'json', ctx))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => server.close())
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`
  const unreachable = new Pool(`http://127.0.0.1:${await freePort()}`)
  t.teardown(() => unreachable.close())
  const cases = [
    { model: 'fake/ok', stream: false, pool, status: 200, outcome: 'ok' },
    { model: 'fake/ok', stream: true, pool, status: 200, outcome: 'ok' },
    { model: 'fake/sized', stream: false, pool, status: 200, outcome: 'ok' },
    { model: 'fake/cut-stream', stream: true, pool, status: 200, outcome: 'incomplete' },
    { model: 'fake/ok', stream: false, pool: unreachable, status: 502, outcome: 'upstream_unreachable' },
  ]
  for (const c of cases) {
    ctx.upstream.pool = c.pool
    const r = await post(url, JSON.stringify({ model: c.model, stream: c.stream, messages: [] }))
    t.equal(r.status, c.status, c.model)
    // The observer runs in the same turn as the response's end, before the client can read it.
    t.same(seen.splice(0), [{ status: c.status, outcome: c.outcome, ended: true }], `${c.model} stream=${c.stream}: observed once, after the end`)
  }
  // finish() could not hand the record over: the client is answered in full, but the exchange is
  // not counted, so metrics never count what the ledger does not have.
  ctx.upstream.pool = pool
  refuse = true
  const r = await post(url, '{"model":"fake/ok","messages":[]}')
  t.equal(r.status, 200)
  t.match(JSON.parse(r.text), { object: 'chat.completion' })
  t.same(seen, [], 'not observed')
})

t.test('an exception while recording answers the client in full, and the next request is served', async (t) => {
  const ledger = s.sidecar.ledger()!
  const record = ledger.record
  let thrown = 0
  ledger.record = () => { thrown++; throw new Error('injected ledger fault') }
  try {
    const r = await post(`${s.url}/v1/chat/completions`, '{"model":"fake/ok","messages":[]}')
    t.equal(r.status, 200)
    t.match(JSON.parse(r.text), { object: 'chat.completion' }, 'the whole answer arrived')
    const streamed = await post(`${s.url}/v1/chat/completions`, '{"model":"fake/ok","stream":true,"messages":[]}')
    t.equal(streamed.status, 200)
    t.match(streamed.text, /data: \[DONE\]/, 'the whole stream arrived')
  } finally {
    ledger.record = record
  }
  t.equal(thrown, 2)
  t.match(s.logs.text, /could not record its outcome/)
  const after = await post(`${s.url}/v1/chat/completions`, '{"model":"fake/ok","messages":[]}')
  t.equal(after.status, 200)
})
