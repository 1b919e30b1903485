import t from 'tap'
import type { IncomingHttpHeaders } from 'node:http'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// Model allowlists on a multipart upload (audio transcriptions, image edits) name their model in a
// form field, not in JSON: a restricted caller who names an allowed model is served, one who names
// another (in any of several `model` fields) is refused by name before anything goes upstream.
// And the tricks on a JSON model id: case, variants, trailing space, a lookalike letter.

const ADMIN_KEY = 'admin-key-attack-s10-upload'
let fake: FakeOpenRouter
let db: TestDb
let s: Started
const groupsOf = (h: IncomingHttpHeaders): string[] => {
  const v = h['x-test-groups']
  return typeof v === 'string' && v !== '' ? [...new Set(v.split(','))].sort() : []
}

t.before(async () => {
  fake = await new FakeOpenRouter(44).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, BUDGET_REFRESH_MS: '100', LOG_LEVEL: 'warn' }), { groupsOf })
  const put = await request(s.url + '/admin/v1/allowlists/groups/lab', {
    method: 'PUT', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ models: ['fake/whisper', 'fake/ok'] }),
  })
  await put.body.dump()
  if (put.statusCode !== 200) throw new Error(`allowlist PUT answered ${put.statusCode}`)
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

const B = '----attack10'
const form = (models: string[]) => [
  ...models.map((m) => `--${B}\r\nContent-Disposition: form-data; name="model"\r\n\r\n${m}\r\n`),
  `--${B}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF\u0000data\r\n--${B}--\r\n`,
].join('')

async function upload (models: string[]) {
  const res = await request(s.url + '/v1/audio/transcriptions', {
    method: 'POST',
    headers: { 'x-openwebui-user-id': 'stu', 'x-test-groups': 'lab', 'content-type': `multipart/form-data; boundary=${B}` },
    body: form(models),
  })
  return { status: res.statusCode, body: await res.body.json() as any }
}

async function chat (model: string) {
  const res = await request(s.url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': 'stu', 'x-test-groups': 'lab' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 }),
  })
  return { status: res.statusCode, body: await res.body.json() as any }
}

t.test('an upload naming an allowed model is served', async (t) => {
  const before = fake.requests.length
  const r = await upload(['fake/whisper'])
  t.equal(r.status, 200, JSON.stringify(r.body))
  t.equal(fake.requests.length, before + 1, 'it went upstream')
})

t.test('an upload naming a model not allowed is refused by name, nothing upstream', async (t) => {
  const before = fake.requests.length
  for (const models of [['openai/whisper-1'], ['fake/whisper', 'openai/whisper-1'], ['openai/whisper-1', 'fake/whisper']]) {
    const r = await upload(models)
    t.equal(r.status, 403, models.join(' then '))
    t.equal(r.body.error.code, 'model_not_allowed')
    t.match(r.body.error.message, /'openai\/whisper-1' is not allowed for group 'lab'/)
  }
  const none = await upload([])
  t.equal(none.status, 403, 'an upload naming no model: refused, a restricted caller may not let OpenRouter pick')
  t.equal(fake.requests.length, before, 'nothing reached OpenRouter')
})

t.test('model id tricks on JSON requests', async (t) => {
  t.equal((await chat('FAKE/OK')).status, 200, 'ids compare case-insensitively')
  t.equal((await chat('fake/ok:free')).status, 200, 'a variant of an allowed model')
  for (const m of ['fake/ok ', ' fake/ok', 'fаke/ok', 'fake/ok\u200b', 'fake/okay', 'fake', 'fake/ok/../x']) {
    const r = await chat(m)
    t.equal(r.status, 403, `refused: ${JSON.stringify(m)}`)
    t.equal(r.body.error.code, 'model_not_allowed')
  }
})

t.test('every list of models is filtered for a restricted caller, not only /v1/models', async (t) => {
  for (const path of ['/v1/models', '/v1/models/user', '/api/v1/models/user', '/v1/embeddings/models', '/v1/models/user/']) {
    const res = await request(s.url + path, { headers: { 'x-openwebui-user-id': 'stu', 'x-test-groups': 'lab' } })
    t.equal(res.statusCode, 200, path)
    const ids = ((await res.body.json()) as { data: Array<{ id: string }> }).data.map((m) => m.id)
    t.ok(ids.length > 0 && ids.every((id) => id === 'fake/ok' || id === 'fake/whisper' || id.startsWith('fake/ok:') || id === 'usage-proxy/my-usage'), `${path}: only allowed models (${ids.join(', ')})`)
  }
  const open = await request(s.url + '/v1/models/user', { headers: { 'x-openwebui-user-id': 'free' } })
  const all = ((await open.body.json()) as { data: Array<{ id: string }> }).data.map((m) => m.id)
  t.ok(all.some((id) => id !== 'fake/ok' && id !== 'fake/whisper'), 'an unrestricted caller still sees the whole list')
  t.notOk(all.includes('usage-proxy/my-usage'), 'the My usage entry is added to /models only')
})
