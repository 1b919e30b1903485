import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// /admin/v1/keys through HTTP on a real database: a key is made with its secret shown once, listed
// and read without it, revoked (the row stays), every change is in the audit trail, and the
// secret is nowhere else: not in any later answer, the trail, the database or the log.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
let db: TestDb
let s: Started
/** Every secret this file was shown: none may appear anywhere but in its creation's answer. */
const secrets: string[] = []

t.before(async () => {
  fake = await new FakeOpenRouter(5).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, PROXY_API_KEY: 'proxy-key-for-the-chat-app' }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function call (method: string, path: string, body?: unknown, headers: Record<string, string> = admin) {
  const res = await request(s.url + path, { method: method as 'GET', headers, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body) })
  const text = await res.body.text()
  return { status: res.statusCode, text, body: text === '' ? null : JSON.parse(text) }
}

async function create (body: unknown) {
  const r = await call('POST', '/admin/v1/keys', body)
  if (r.status === 201) secrets.push(r.body.key)
  return r
}

t.test('the admin key is required on every key route', async (t) => {
  for (const [m, p] of [['POST', '/admin/v1/keys'], ['GET', '/admin/v1/keys'], ['GET', '/admin/v1/keys/key_AAAAAAAAAAAAAAAA'], ['DELETE', '/admin/v1/keys/key_AAAAAAAAAAAAAAAA']]) {
    const r = await call(m, p, m === 'POST' ? { name: 'x' } : undefined, { 'content-type': 'application/json' })
    t.equal(r.status, 401, `${m} ${p}`)
  }
  const [{ n }] = await db.sql`select count(*)::int as n from api_keys`
  t.equal(n, 0, 'nothing was made without the admin key')
})

t.test('create: 201 with the secret once; list and read show everything but the secret', async (t) => {
  const expires = new Date(Date.now() + 30 * 86_400_000).toISOString()
  const made = await create({ name: '  reporting-bot  ', user_id: 'svc-reporting', groups: ['finance', 'ops', 'finance'], rpm: 120, models: ['openai/gpt-4o-mini', 'anthropic/claude-3.5-haiku'], expires_at: expires })
  t.equal(made.status, 201, made.text)
  const k = made.body
  t.match(k.key, /^upk_[A-Za-z0-9_-]{43}$/, 'the secret: upk_ and 32 random bytes')
  t.match(k.id, /^key_[A-Za-z0-9_-]{16}$/)
  t.equal(k.object, 'api_key')
  t.equal(k.name, 'reporting-bot', 'the name is trimmed')
  t.equal(k.prefix, k.key.slice(0, 12), 'the prefix is the start of the secret')
  t.equal(k.user_id, 'svc-reporting')
  t.same(k.groups, ['finance', 'ops'], 'groups sorted, once each')
  t.equal(k.rpm, 120)
  t.same(k.models, ['openai/gpt-4o-mini', 'anthropic/claude-3.5-haiku'])
  t.equal(k.expires_at, expires.replace(/\.\d+Z$/, (m) => m.slice(0, 4) + 'Z'))
  t.equal(k.status, 'active')
  t.equal(k.last_used_at, null)
  t.equal(k.revoked_at, null)
  t.match(k.created_at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/)

  const other = await create({ name: 'plain' })
  t.equal(other.status, 201)
  t.not(other.body.key, k.key, 'every key has its own secret')
  t.same([other.body.user_id, other.body.groups, other.body.rpm, other.body.models, other.body.expires_at, other.body.budget], [null, [], null, null, null, null], 'defaults')

  const list = await call('GET', '/admin/v1/keys')
  t.equal(list.status, 200)
  t.equal(list.body.object, 'list')
  t.same(list.body.data.map((x: any) => x.id), [k.id, other.body.id], 'oldest first')
  const { key: _secret, ...shown } = k
  t.same(list.body.data[0], shown, 'the listed key is the created one without its secret')
  const one = await call('GET', `/admin/v1/keys/${k.id}`)
  t.same(one.body, shown)
  for (const text of [list.text, one.text]) {
    t.notOk(text.includes(k.key.slice(12)), 'no part of the secret past its prefix in a read')
    t.notOk(/secret|hash/.test(text), 'nor its hash')
  }
  t.equal((await call('GET', '/admin/v1/keys/key_AAAAAAAAAAAAAAAA')).status, 404)
  t.equal((await call('GET', '/admin/v1/keys/nonsense')).status, 404)
})

t.test('list pages with limit and next_cursor', async (t) => {
  for (const n of [1, 2, 3]) t.equal((await create({ name: `page-${n}` })).status, 201)
  const all = (await call('GET', '/admin/v1/keys?limit=1000')).body.data.map((x: any) => x.id)
  const seen: string[] = []
  let cursor: string | null = null
  for (;;) {
    const r: any = await call('GET', `/admin/v1/keys?limit=2${cursor ? `&cursor=${cursor}` : ''}`)
    t.equal(r.status, 200)
    seen.push(...r.body.data.map((x: any) => x.id))
    t.equal(r.body.has_more, r.body.next_cursor !== null)
    if (!r.body.has_more) break
    cursor = r.body.next_cursor
  }
  t.same(seen, all, 'every key once, in order')
  t.equal((await call('GET', '/admin/v1/keys?limit=0')).status, 400)
  t.equal((await call('GET', '/admin/v1/keys?cursor=nope')).status, 400)
})

t.test('bad bodies: 400 naming what is wrong, nothing written', async (t) => {
  const [{ n: before }] = await db.sql`select count(*)::int as n from api_keys`
  const past = new Date(Date.now() - 60_000).toISOString()
  const cases: Array<[string, unknown, RegExp]> = [
    ['not JSON', '{"name": ', /JSON object/],
    ['an array', '[]', /JSON object/],
    ['unknown field', { name: 'a', secret: 'mine' }, /unknown field secret/],
    ['no name', { rpm: 5 }, /name is required/],
    ['blank name', { name: '   ' }, /name must be 1 to 200/],
    ['long name', { name: 'x'.repeat(201) }, /name must be 1 to 200/],
    ['name with a control character', { name: 'a\u0007b' }, /printable/],
    ['user_id a number', { name: 'a', user_id: 7 }, /user_id must be/],
    ['user_id too long', { name: 'a', user_id: 'u'.repeat(257) }, /user_id must be/],
    ['user_id naming a key', { name: 'a', user_id: 'key:key_AAAAAAAAAAAAAAAA' }, /must not start with "key:"/],
    ['groups a string', { name: 'a', groups: 'finance' }, /groups must be an array/],
    ['too many groups', { name: 'a', groups: Array.from({ length: 65 }, (_, i) => `g${i}`) }, /at most 64/],
    ['a group too long', { name: 'a', groups: ['g'.repeat(129)] }, /1 to 128/],
    ['an unexpanded template', { name: 'a', groups: ['{{USER_GROUPS}}'] }, /template/],
    ['a group with a comma', { name: 'a', groups: ['a,b'] }, /without a comma/],
    ['an empty group', { name: 'a', groups: [''] }, /each group/],
    ['rpm zero', { name: 'a', rpm: 0 }, /rpm must be a whole number/],
    ['rpm fractional', { name: 'a', rpm: 1.5 }, /rpm must be a whole number/],
    ['rpm a string', { name: 'a', rpm: '60' }, /rpm must be a whole number/],
    ['rpm absurd', { name: 'a', rpm: 10_000_001 }, /rpm must be a whole number/],
    ['models empty', { name: 'a', models: [] }, /models must be an array of 1/],
    ['models a string', { name: 'a', models: 'openai/gpt-4o' }, /models must be an array/],
    ['a model with a space', { name: 'a', models: ['gpt 4'] }, /without spaces/],
    ['too many models', { name: 'a', models: Array.from({ length: 1001 }, (_, i) => `m/${i}`) }, /1 to 1000/],
    ['expiry in the past', { name: 'a', expires_at: past }, /not in the future/],
    ['expiry without a zone', { name: 'a', expires_at: '2099-01-01T00:00:00' }, /expires_at must be an instant/],
    ['expiry a day that does not exist', { name: 'a', expires_at: '2099-02-30T00:00:00Z' }, /expires_at must be an instant/],
    ['expiry a number', { name: 'a', expires_at: 4102444800 }, /expires_at must be an instant/],
    ['budget unknown field', { name: 'a', budget: { limit_usd: '5', period: 'month', hard: true } }, /budget: unknown field hard/],
    ['budget bad period', { name: 'a', budget: { limit_usd: '5', period: 'year' } }, /budget: period must be one of/],
    ['budget negative', { name: 'a', budget: { limit_usd: '-5', period: 'day' } }, /budget: limit_usd must be a non-negative/],
    ['budget a number', { name: 'a', budget: 5 }, /budget must be a JSON object/],
    ['too large', { name: 'a', models: Array.from({ length: 900 }, (_, i) => `vendor/${'m'.repeat(80)}-${i}`) }, /JSON object|at most 64 KiB/],
  ]
  for (const [what, body, message] of cases) {
    const r = await call('POST', '/admin/v1/keys', body)
    t.equal(r.status, 400, what)
    t.match(r.body, { error: { type: 'invalid_request_error', code: 'invalid_key', message } }, what)
  }
  const [{ n: after }] = await db.sql`select count(*)::int as n from api_keys`
  t.equal(after, before, 'no key was made')
})

t.test('revoke: the row stays with revoked_at; a second revoke changes nothing; unknown is 404', async (t) => {
  const made = await create({ name: 'to-revoke' })
  const id = made.body.id
  const r = await call('DELETE', `/admin/v1/keys/${id}`)
  t.equal(r.status, 200)
  t.equal(r.body.status, 'revoked')
  t.match(r.body.revoked_at, /^\d{4}-/)
  t.notOk('key' in r.body, 'no secret in the answer')
  const again = await call('DELETE', `/admin/v1/keys/${id}`)
  t.equal(again.status, 200)
  t.equal(again.body.revoked_at, r.body.revoked_at, 'revoked once: the first time stays')
  const [row] = await db.sql`select revoked_at from api_keys where id = ${id}`
  t.ok(row.revoked_at, 'the row is kept')
  t.equal((await call('GET', `/admin/v1/keys/${id}`)).body.status, 'revoked')
  t.equal((await call('DELETE', '/admin/v1/keys/key_AAAAAAAAAAAAAAAA')).status, 404)
  const trail = await db.sql`select action from audit_log where target = ${`keys/${id}`} order by id`
  t.same(trail.map((x) => x.action), ['key.created', 'key.revoked'], 'one line per change; none for the revoke that changed nothing')
})

t.test('audit: each change with who, what, before and after, never the secret', async (t) => {
  const made = await create({ name: 'audited', rpm: 7, user_id: 'u-audit' })
  await call('DELETE', `/admin/v1/keys/${made.body.id}`)
  // The trail's values read as objects, whether the driver hands jsonb over parsed or as text.
  const value = (v: unknown) => typeof v === 'string' ? JSON.parse(v) : v
  const rows = (await db.sql<Array<{ actor: string, action: string, before: any, after: any }>>`
    select actor, action, before, after from audit_log where target = ${`keys/${made.body.id}`} order by id`)
    .map((r) => ({ ...r, before: value(r.before), after: value(r.after) }))
  t.equal(rows.length, 2)
  t.match(rows[0], { action: 'key.created', before: null, after: { id: made.body.id, name: 'audited', rpm: 7, user_id: 'u-audit', prefix: made.body.prefix, status: 'active' } })
  t.match(rows[1], { action: 'key.revoked', before: { status: 'active', revoked_at: null }, after: { status: 'revoked' } })
  t.match(rows[0].actor, /^admin-key:[0-9a-f]{12}$/, 'a fingerprint of the admin key')
  t.notOk(rows[0].actor.includes(ADMIN_KEY))
})

t.test('the secret is in no table, no later answer and no log line', async (t) => {
  t.ok(secrets.length >= 5, `${secrets.length} secrets made in this file`)
  const dump = (await db.sql`select coalesce(string_agg(k::text, ' '), '') as t from api_keys k`)[0].t as string
  const trail = (await db.sql`select coalesce(string_agg(a::text, ' '), '') as t from audit_log a`)[0].t as string
  const list = (await call('GET', '/admin/v1/keys?limit=1000')).text
  for (const secret of secrets) {
    const tail = secret.slice(12)
    t.notOk(dump.includes(tail), 'not in api_keys')
    t.notOk(trail.includes(tail), 'not in the audit trail')
    t.notOk(list.includes(tail), 'not in the list')
    t.notOk(s.logs.text.includes(tail), 'not in the log')
  }
})
