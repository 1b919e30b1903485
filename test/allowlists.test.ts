import t from 'tap'
import type { IncomingHttpHeaders } from 'node:http'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { Allowlists, allowedBy, refusalFor } from '../src/budgets/allowlists.js'
import { createLogger } from '../src/lib/log.js'

// Model allowlists per group through the HTTP API: the admin routes (validated, audited), the 403
// before anything goes upstream or is held against a budget (plain, streaming, the `models`
// fallback list, no model), GET /v1/models filtered, and a change made on one sidecar applied by
// another within BUDGET_REFRESH_MS. The request's groups come from StartOptions.groupsOf reading
// `x-test-groups`.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
const groupsOf = (h: IncomingHttpHeaders): string[] => {
  const v = h['x-test-groups']
  return typeof v === 'string' && v !== '' ? [...new Set(v.split(','))].sort() : []
}
const MY = 'usage-proxy/my-usage'
let fake: FakeOpenRouter
let db: TestDb
let a: Started
let b: Started

t.before(async () => {
  fake = await new FakeOpenRouter(41).start()
  db = await createTestDb({ migrated: true })
  const env = { ADMIN_API_KEY: ADMIN_KEY, BUDGET_REFRESH_MS: '100', LOG_LEVEL: 'warn' }
  a = await startSidecar(baseEnv(fake, db.url, env), { groupsOf })
  b = await startSidecar(baseEnv(fake, db.url, env), { groupsOf })
})
t.teardown(async () => {
  await a?.sidecar.stop('test end')
  await b?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function call (base: string, method: string, path: string, body?: unknown) {
  const res = await request(base + path, { method: method as 'GET', headers: admin, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body) })
  return { status: res.statusCode, body: await res.body.json() as any }
}

async function chat (base: string, groups: string[], body: Record<string, unknown>) {
  const res = await request(base + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': 'stu', 'x-test-groups': groups.join(',') },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 10, ...body }),
  })
  const text = await res.body.text()
  return { status: res.statusCode, type: String(res.headers['content-type']), text, json: () => JSON.parse(text) }
}

async function models (base: string, groups: string[]): Promise<string[]> {
  const res = await request(base + '/v1/models', { headers: { 'x-openwebui-user-id': 'stu', 'x-test-groups': groups.join(',') } })
  const body = await res.body.json() as { data: Array<{ id: string }> }
  return body.data.map((m) => m.id).sort()
}

t.test('admin routes: validated, listed, audited', async (t) => {
  for (const bad of [{}, { models: 'fake/ok' }, { models: [''] }, { models: ['  '] }, { models: [1] }, { models: ['fake/ok'], extra: 1 }, { models: Array(1001).fill('m') }, { models: ['x'.repeat(257)] }, [], 'null']) {
    const r = await call(a.url, 'PUT', '/admin/v1/allowlists/groups/physics', bad)
    t.equal(r.status, 400, `refused: ${JSON.stringify(bad).slice(0, 40)}`)
    t.equal(r.body.error.code, 'invalid_allowlist')
  }
  t.equal((await call(a.url, 'GET', '/admin/v1/allowlists/groups/physics')).status, 404, 'no list yet')
  const put = await call(a.url, 'PUT', '/admin/v1/allowlists/groups/physics', { models: [' fake/ok ', 'fake/vision', 'fake/ok'] })
  t.equal(put.status, 200)
  t.same(put.body.models, ['fake/ok', 'fake/vision'], 'trimmed, duplicates dropped')
  t.same((await call(a.url, 'GET', '/admin/v1/allowlists/groups/physics')).body.models, ['fake/ok', 'fake/vision'])
  t.equal((await call(a.url, 'PUT', '/admin/v1/allowlists/groups/tmp', { models: ['fake/slow'] })).status, 200)
  const list = await call(a.url, 'GET', '/admin/v1/allowlists')
  t.same(list.body.data.map((l: any) => l.group_id), ['physics', 'tmp'])
  t.same((await call(a.url, 'DELETE', '/admin/v1/allowlists/groups/tmp')).body, { object: 'allowlist.deleted', group_id: 'tmp', deleted: true })
  t.equal((await call(a.url, 'DELETE', '/admin/v1/allowlists/groups/tmp')).status, 404)
  const audit = await db.sql`select action, target, after from audit_log where target like 'allowlists/%' order by at, id`
  t.same(audit.map((r) => [r.action, r.target]), [
    ['allowlist.set', 'allowlists/groups/physics'], ['allowlist.set', 'allowlists/groups/tmp'], ['allowlist.deleted', 'allowlists/groups/tmp']])
  const after = typeof audit[0].after === 'string' ? JSON.parse(audit[0].after) : audit[0].after
  t.same(after, { models: ['fake/ok', 'fake/vision'] })
})

t.test('requests: a model not allowed is refused with 403 before anything goes upstream or is held', async (t) => {
  await call(a.url, 'PUT', '/admin/v1/allowlists/groups/physics', { models: ['fake/ok', 'fake/vision'] })
  await call(a.url, 'PUT', '/admin/v1/allowlists/groups/art', { models: ['fake/vision', 'fake/slow'] })
  await call(a.url, 'PUT', '/admin/v1/budgets/organization', { limit_usd: '100', period: 'month' })
  const sent = (): number => fake.requests.filter((r) => r.method === 'POST').length
  const before = sent()

  const refused = await chat(a.url, ['physics'], { model: 'fake/slow' })
  t.equal(refused.status, 403)
  t.same(Object.keys(refused.json().error).sort(), ['code', 'message', 'type'])
  t.equal(refused.json().error.type, 'invalid_request_error')
  t.equal(refused.json().error.code, 'model_not_allowed')
  t.equal(refused.json().error.message, "The model 'fake/slow' is not allowed for group 'physics'. Allowed: fake/ok, fake/vision.")
  const stream = await chat(a.url, ['physics'], { model: 'fake/slow', stream: true })
  t.equal(stream.status, 403, 'a stream is refused the same way, before any event')
  t.match(stream.type, /application\/json/)
  t.equal(stream.json().error.code, 'model_not_allowed')
  const fallback = await chat(a.url, ['physics'], { model: 'fake/ok', models: ['fake/ok', 'fake/slow'] })
  t.equal(fallback.status, 403, 'every model of the fallback list must be allowed')
  t.match(fallback.json().error.message, /'fake\/slow'/)
  const fallbackOnly = await chat(a.url, ['physics'], { models: ['fake/slow'] })
  t.equal(fallbackOnly.status, 403, 'a fallback list without model')
  const none = await chat(a.url, ['physics'], {})
  t.equal(none.status, 403, 'no model at all: OpenRouter would pick one')
  t.match(none.json().error.message, /^Name a model/)
  const notList = await chat(a.url, ['physics'], { model: 'fake/ok', models: 'fake/slow' })
  t.equal(notList.status, 403, 'a models field that is not a list of ids')
  const both = await chat(a.url, ['art', 'physics'], { model: 'fake/ok' })
  t.equal(both.status, 403, 'two groups with lists: both must allow it')
  t.match(both.json().error.message, /for group 'art'/)
  t.equal(sent(), before, 'nothing reached OpenRouter')
  const [{ held, rows }] = await db.sql`select (select count(*)::int from budget_reservations) as held, (select count(*)::int from usage_events) as rows`
  t.equal(held, 0, 'nothing was held against a budget')
  t.equal(rows, 0, 'and no usage row was written')
  const [{ reserved }] = await db.sql`select coalesce(sum(reserved_usd), 0)::text as reserved from budget_counters`
  t.equal(reserved, '0')

  const ok = await chat(a.url, ['physics'], { model: 'fake/ok' })
  t.equal(ok.status, 200, 'an allowed model is served')
  const okStream = await chat(a.url, ['physics'], { model: 'fake/ok', stream: true, models: ['fake/vision'] })
  t.equal(okStream.status, 200, 'streaming, with an allowed fallback list')
  t.match(okStream.text, /data: \[DONE\]/)
  const variant = await chat(a.url, ['physics'], { model: 'FAKE/OK:nitro' })
  t.not(variant.status, 403, 'a variant of an allowed model, in any case, is allowed')
  const both2 = await chat(a.url, ['art', 'physics'], { model: 'fake/vision' })
  t.equal(both2.status, 200, 'a model both lists allow')
  const free = await chat(a.url, ['chem'], { model: 'fake/slow', max_tokens: 1 })
  t.equal(free.status, 200, 'a group without a list is not restricted')
  const nobody = await chat(a.url, [], { model: 'fake/slow', max_tokens: 1 })
  t.equal(nobody.status, 200, 'nor is a user in no group')
})

t.test('GET /v1/models lists what the caller may use', async (t) => {
  await call(a.url, 'PUT', '/admin/v1/allowlists/groups/physics', { models: ['fake/ok', 'fake/vision'] })
  await call(a.url, 'PUT', '/admin/v1/allowlists/groups/art', { models: ['fake/vision', 'fake/slow'] })
  // The virtual "My usage" model is free and answered locally: everyone keeps it.
  t.same(await models(a.url, ['physics']), ['fake/ok', 'fake/vision', MY])
  t.same(await models(a.url, ['art', 'physics']), ['fake/vision', MY], 'two lists: what both allow')
  t.same(await models(a.url, ['chem']), ['fake/ok', 'fake/slow', 'fake/vision', MY], 'no list: everything')
  t.same(await models(a.url, []), ['fake/ok', 'fake/slow', 'fake/vision', MY])
  const my = await chat(a.url, ['physics'], { model: MY })
  t.equal(my.status, 200, 'and may use it')
})

t.test('a change on one sidecar is applied by another within BUDGET_REFRESH_MS', async (t) => {
  t.equal((await chat(b.url, ['music'], { model: 'fake/slow', max_tokens: 1 })).status, 200, 'no list yet')
  await call(a.url, 'PUT', '/admin/v1/allowlists/groups/music', { models: ['fake/ok'] })
  t.equal((await chat(a.url, ['music'], { model: 'fake/slow' })).status, 403, 'the writing sidecar applies it at once')
  const seen = await rowsSoon(async () => (await chat(b.url, ['music'], { model: 'fake/slow' })).status === 403 ? [1] : [], 10_000)
  t.same(seen, [1], 'the other sidecar applies it after its refresh')
  t.same(await models(b.url, ['music']), ['fake/ok', MY])
  await call(a.url, 'DELETE', '/admin/v1/allowlists/groups/music')
  const lifted = await rowsSoon(async () => (await models(b.url, ['music'])).length === 4 ? [1] : [], 10_000)
  t.same(lifted, [1], 'and its removal')
})

t.test('the checks themselves: key lists, variants, every list', async (t) => {
  const lists = new Allowlists(db.sql, 'mai_client_63a4eb6d', 60_000, createLogger('silent'))
  t.teardown(() => lists.close())
  await lists.refresh()
  t.same(await lists.restrictions([], null), [], 'nothing restricts a caller without lists')
  const key = await lists.restrictions([], ['openai/gpt-4o', 'meta/llama:free'])
  t.ok(allowedBy(key, 'openai/gpt-4o:nitro'), 'an entry without a variant allows its variants')
  t.notOk(allowedBy(key, 'meta/llama'), 'an entry with a variant allows only that variant')
  t.ok(allowedBy(key, 'meta/llama:free'))
  t.notOk(allowedBy(key, 'openai/gpt-4o-mini'), 'whole ids, no prefixes')
  t.equal(refusalFor(key, ['openai/gpt-4o-mini']), "The model 'openai/gpt-4o-mini' is not allowed for this API key. Allowed: openai/gpt-4o, meta/llama:free.")
  const both = await lists.restrictions(['physics'], ['fake/vision'])
  t.equal(both.length, 2, 'the group list and the key list')
  t.notOk(allowedBy(both, 'fake/ok'), 'the key does not allow it')
  t.ok(allowedBy(both, 'fake/vision'))
  t.equal(refusalFor(await lists.restrictions([], []), ['fake/ok']), "The model 'fake/ok' is not allowed for this API key. Allowed: none.", 'an empty key list allows nothing')
})
