import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, type Started } from './support/sidecar.js'
import { signJwt } from './support/sign-jwt.js'
import { parseCsv } from './support/csv.js'
import { statement, type Statement } from '../src/usage/reports/statement.js'

// Open WebUI groups as identity, through the HTTP API with a real Postgres: the group header
// Open WebUI sends with `X-OpenWebUI-User-Groups: {{USER_GROUPS}}`, the signed claim, the trust
// rule next to a JWT secret, and the reports by group, whose rows count a request once per group
// while the organization's total counts it once.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const ADMIN = { authorization: `Bearer ${ADMIN_KEY}` }
const SECRET = 'jwt-secret-0123456789abcdef'
const HEADER = 'x-openwebui-user-groups'

let fake: FakeOpenRouter
let db: TestDb
/** No JWT secret: the plain headers are the identity, the group header counts. */
let plain: Started
/** A JWT secret: only what is signed counts. */
let signed: Started
/** A JWT secret and TRUST_GROUP_HEADER=true: the group header counts next to the signed user. */
let trusting: Started
let rows = 0

const now = new Date()
const FROM = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().slice(0, 10)
const TO = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString().slice(0, 10)
const MONTH = FROM.slice(0, 7)

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  plain = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }))
  signed = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, FORWARD_USER_INFO_HEADER_JWT_SECRET: SECRET }))
  trusting = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, FORWARD_USER_INFO_HEADER_JWT_SECRET: SECRET, TRUST_GROUP_HEADER: 'true' }))
})
t.teardown(async () => {
  await plain?.sidecar.stop('test end')
  await signed?.sidecar.stop('test end')
  await trusting?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

async function chat (on: Started, headers: Record<string, string>): Promise<{ status: number, body: any }> {
  const res = await request(`${on.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], stream: false }),
  })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

/** A request that makes a row; waits until the row is in Postgres and returns its groups. */
async function rowGroups (on: Started, headers: Record<string, string>): Promise<string[]> {
  const r = await chat(on, headers)
  if (r.status !== 200) throw new Error(`status ${r.status}: ${JSON.stringify(r.body)}`)
  rows++
  const n = await settle(on.sidecar, db.sql, rows)
  if (n < rows) throw new Error(`only ${n} of ${rows} rows written`)
  const [row] = await db.sql<Array<{ groups: string[] }>>`select groups from usage_events where generation_id = ${r.body.id}`
  return row.groups
}

async function get (on: Started, path: string): Promise<{ status: number, text: string, json: () => any }> {
  const res = await request(on.url + path, { headers: ADMIN })
  const text = await res.body.text()
  return { status: res.statusCode, text, json: () => JSON.parse(text) }
}

const jwt = (claims: Record<string, unknown>): string =>
  signJwt({ iss: 'open-webui', iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 300, ...claims }, SECRET)

t.test('the group header as Open WebUI sends it: comma-separated names, normalized', async (t) => {
  const user = { 'x-openwebui-user-id': 'u-ada', 'x-openwebui-user-name': 'Ada' }
  t.same(await rowGroups(plain, { ...user, [HEADER]: 'Engineering,Teachers' }), ['Engineering', 'Teachers'])
  t.same(await rowGroups(plain, { ...user, [HEADER]: ' Teachers , Engineering,,Teachers, ' }), ['Engineering', 'Teachers'], 'trimmed, empties dropped, deduped, sorted')
  t.same(await rowGroups(plain, { ...user, [HEADER]: 'R%C3%A9seau,Eng%2COps' }), ['Eng,Ops', 'Réseau'], 'percent-encoded names decoded, after the split')
  t.same(await rowGroups(plain, { ...user, [HEADER]: Buffer.from('Équipe', 'utf8').toString('latin1') }), ['Équipe'], 'raw UTF-8 bytes read as UTF-8')
  t.same(await rowGroups(plain, { ...user, [HEADER]: 'a\tb' }), ['ab'], 'control characters (a tab) removed')
  const upstream = fake.requests.at(-1)!
  t.equal(upstream.headers[HEADER], undefined, 'the group header never goes upstream')
  const [m] = await db.sql<Array<{ groups: string[] }>>`select groups from user_mappings where user_id = 'u-ada'`
  t.same(m.groups, ['ab'], 'the mapping keeps the latest groups')
})

t.test('an unexpanded template is no group', async (t) => {
  const user = { 'x-openwebui-user-id': 'u-tpl' }
  t.same(await rowGroups(plain, { ...user, [HEADER]: '{{USER_GROUPS}}' }), [])
  t.same(await rowGroups(plain, { ...user, [HEADER]: 'Staff,{{USER_GROUP_IDS}}' }), ['Staff'], 'a template among names is dropped, the names stay')
  t.same(await rowGroups(plain, { ...user, [HEADER]: '   ' }), [])
  t.same(await rowGroups(plain, user), [], 'no header, no group')
})

t.test('an absurd group list is refused with a 400 naming the limit, and nothing goes upstream', async (t) => {
  const before = fake.requests.length
  const many = await chat(plain, { 'x-openwebui-user-id': 'u-many', [HEADER]: Array.from({ length: 65 }, (_, i) => `g${i}`).join(',') })
  t.equal(many.status, 400)
  t.equal(many.body.error.code, 'invalid_groups')
  t.match(many.body.error.message, /65 groups; at most 64/)
  const long = await chat(plain, { 'x-openwebui-user-id': 'u-many', [HEADER]: 'x'.repeat(129) })
  t.equal(long.status, 400)
  t.match(long.body.error.message, /longer than 128/)
  t.equal(fake.requests.length, before, 'nothing was sent upstream')
  t.same(await rowGroups(plain, { 'x-openwebui-user-id': 'u-many', [HEADER]: Array.from({ length: 64 }, (_, i) => `g${i}`).join(',') }).then((g) => g.length), 64, '64 are accepted')
})

t.test('with a JWT secret: the signed claim counts, an unsigned group header does not', async (t) => {
  t.same(await rowGroups(signed, { 'x-openwebui-user-jwt': jwt({ sub: 'u-jwt', groups: ['Sales', 'Eng', 'Sales'] }) }), ['Eng', 'Sales'], 'array claim')
  t.same(await rowGroups(signed, { 'x-openwebui-user-jwt': jwt({ sub: 'u-jwt', groups: 'Ops, Eng' }) }), ['Eng', 'Ops'], 'comma-string claim')
  t.same(await rowGroups(signed, { 'x-openwebui-user-jwt': jwt({ sub: 'u-jwt' }), [HEADER]: 'Admins' }), [], 'no claim: the unsigned header is not trusted')
  t.same(await rowGroups(signed, { 'x-openwebui-user-id': 'u-forger', [HEADER]: 'Admins' }), [], 'plain identity and groups: neither trusted')
  const [forged] = await db.sql`select user_id from usage_events where groups = '{}' and user_id is null order by created_at desc limit 1`
  t.ok(forged, 'the forged request is the organization\'s, in no group')
  const bad = await chat(signed, { 'x-openwebui-user-jwt': jwt({ sub: 'u-jwt', groups: { a: 1 } }) })
  t.equal(bad.status, 400, 'a claim of another shape is refused')
  t.equal(bad.body.error.code, 'invalid_groups')
  t.same(await rowGroups(signed, { 'x-openwebui-user-jwt': jwt({ sub: 'u-jwt', groups: ['{{USER_GROUPS}}'] }) }), [], 'a signed template is no group either')
  t.same(await rowGroups(signed, { 'x-openwebui-user-jwt': jwt({ sub: 'u-jwt', groups: ['Lab\u0000\u0007', ' ', 'Lab'] }) }), ['Lab'], 'control characters and blanks in a claim removed')
})

t.test('TRUST_GROUP_HEADER=true: the header counts next to the signed identity; a signed claim wins', async (t) => {
  t.same(await rowGroups(trusting, { 'x-openwebui-user-jwt': jwt({ sub: 'u-trust' }), [HEADER]: 'Library' }), ['Library'])
  t.same(await rowGroups(trusting, { 'x-openwebui-user-jwt': jwt({ sub: 'u-trust', groups: ['Signed'] }), [HEADER]: 'Library' }), ['Signed'])
  t.same(await rowGroups(trusting, { 'x-openwebui-user-jwt': jwt({ sub: 'u-trust', groups: [] }), [HEADER]: 'Library' }), [], 'a signed empty list is the answer')
})

interface Raw { event_id: string, user_id: string | null, groups: string[], billed: string | null, cost: string | null, prompt: number | null }

async function ledger (): Promise<Raw[]> {
  return db.sql<Raw[]>`select event_id::text, user_id, groups, billed_cost_usd::text as billed, cost_usd::text as cost, prompt_tokens as prompt
    from usage_events where created_at >= ${FROM}::timestamptz and created_at < ${TO}::timestamptz`
}

const same = (a: string, b: string): boolean => sumDecimals([a]) === sumDecimals([b])

t.test('group_by=group: each group sums its rows to the digit; a two-group request is in both; totals count it once', async (t) => {
  // A member of two groups and a member of one.
  for (let i = 0; i < 3; i++) await rowGroups(plain, { 'x-openwebui-user-id': 'u-two', [HEADER]: 'Maths,Physics' })
  for (let i = 0; i < 2; i++) await rowGroups(plain, { 'x-openwebui-user-id': 'u-one', [HEADER]: 'Physics' })
  const raw = await ledger()
  const body = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=group`)).json()
  t.equal(body.group_by, 'group')
  t.match(body.note, /counts in each of those groups/, 'the response says how requests in several groups count')
  const groups = new Set(raw.flatMap((r) => r.groups))
  t.equal(body.data.length, groups.size, 'one row per group')
  for (const row of body.data) {
    const mine = raw.filter((r) => r.groups.includes(row.group))
    t.equal(row.requests, mine.length, `${row.group}: requests`)
    t.equal(row.members, new Set(mine.map((r) => r.user_id)).size, `${row.group}: members`)
    t.ok(same(row.billed_cost_usd, sumDecimals(mine.flatMap((r) => r.billed ?? []))), `${row.group}: billed ${row.billed_cost_usd}`)
    t.ok(same(row.cost_usd, sumDecimals(mine.flatMap((r) => r.cost ?? []))), `${row.group}: cost`)
  }
  const maths = body.data.find((r: any) => r.group === 'Maths')
  const physics = body.data.find((r: any) => r.group === 'Physics')
  t.equal(maths.requests, 3)
  t.equal(physics.requests, 5, 'u-two\'s requests count in Physics too')
  t.equal(physics.members, 2)
  t.equal(body.totals.requests, raw.length, 'totals: every request of the organization, once')
  t.ok(same(body.totals.billed_cost_usd, sumDecimals(raw.flatMap((r) => r.billed ?? []))), 'totals.billed_cost_usd = sum over usage_events')
  const rowSum = sumDecimals(body.data.map((r: any) => r.billed_cost_usd))
  const grouped = sumDecimals(raw.flatMap((r) => r.groups.map(() => r.billed ?? '0')))
  t.ok(same(rowSum, grouped), 'the rows add up to each row\'s cost times its number of groups')

  // The same from the folded rollups: compaction changes nothing.
  await db.sql`select usage_rollup_compact()`
  const again = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=group`)).json()
  t.same(again.data, body.data, 'folded rollups answer the same digits')
  t.same(again.totals, body.totals)
})

t.test('a range of a whole month and some days reads both rollups and gives the same digits', async (t) => {
  // Last month whole (monthly group rollups) and this month up to tomorrow (daily ones).
  const lastMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1)).toISOString().slice(0, 10)
  const tomorrow = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1)).toISOString().slice(0, 10)
  const month = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=group`)).json()
  const mixed = (await get(plain, `/admin/v1/usage?from=${lastMonth}&to=${tomorrow}&group_by=group`)).json()
  t.same(mixed.data, month.data, 'every group, to the digit')
  const physics = (await get(plain, `/admin/v1/usage?from=${lastMonth}&to=${tomorrow}&group_by=user&group=Physics`)).json()
  t.equal(physics.totals.requests, 5)
})

t.test('group=ID narrows every grouping to that group\'s rows', async (t) => {
  const raw = (await ledger()).filter((r) => r.groups.includes('Physics'))
  for (const groupBy of ['user', 'model', 'day', 'task', 'outcome']) {
    const body = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=${groupBy}&group=Physics`)).json()
    t.equal(body.group, 'Physics')
    t.equal(body.note, undefined)
    t.equal(body.totals.requests, raw.length, `${groupBy}: requests`)
    t.ok(same(body.totals.billed_cost_usd, sumDecimals(raw.flatMap((r) => r.billed ?? []))), `${groupBy}: billed`)
  }
  const users = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=user&group=Physics`)).json()
  t.same(users.data.map((r: any) => r.user).sort(), ['u-one', 'u-two'])
  const none = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=user&group=Nobody`)).json()
  t.same(none.data, [])
  t.equal(none.totals.requests, 0)
})

t.test('CSV of group_by=group: the same digits as the JSON', async (t) => {
  const json = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=group`)).json()
  const csv = await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=group&format=csv`)
  t.equal(csv.status, 200)
  const [head, ...lines] = parseCsv(csv.text)
  t.same(head.slice(0, 3), ['group', 'members', 'requests'])
  t.equal(lines.length, json.data.length)
  for (const [i, line] of lines.entries()) {
    const row = json.data[i]
    t.equal(line[0], row.group)
    t.equal(Number(line[1]), row.members)
    t.equal(Number(line[2]), row.requests)
    t.equal(line[head.indexOf('billed_cost_usd')], row.billed_cost_usd, `${row.group}: billed`)
  }
})

t.test('spend_per_group_month: a group\'s month in psql, equal to the API', async (t) => {
  const api = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=group`)).json()
  const view = await db.sql<Array<{ group_id: string, members: string, requests: string, billed_cost_usd: string }>>`
    select group_id, members::text, requests::text, billed_cost_usd::text from spend_per_group_month where month = ${FROM}::date order by group_id`
  t.equal(view.length, api.data.length)
  for (const v of view) {
    const a = api.data.find((r: any) => r.group === v.group_id)
    t.equal(Number(v.requests), a.requests, `${v.group_id}: requests`)
    t.equal(Number(v.members), a.members, `${v.group_id}: members`)
    t.ok(same(v.billed_cost_usd, a.billed_cost_usd), `${v.group_id}: billed`)
  }
  t.ok(MONTH)
})

t.test('bad group parameters are 400s naming them', async (t) => {
  const r = await get(plain, `/admin/v1/usage?group_by=group&group=`)
  t.equal(r.status, 400)
  t.match(r.json().error.message, /group must be 1-500 characters/)
  const b = await get(plain, '/admin/v1/usage?group_by=groups')
  t.equal(b.status, 400)
  t.match(b.json().error.message, /group_by must be one of .*group/)
})

async function runStatement (args: string[]): Promise<string> {
  let out = ''
  await statement(['--month', MONTH, ...args], { DATABASE_URL: db.url, OPENROUTER_EXTERNAL_USER: 'mai_client_63a4eb6d' }, (s) => { out += s })
  return out
}

t.test('usage-proxy statement: a section per group beside the total, which counts each request once', async (t) => {
  const raw = await ledger()
  const s = JSON.parse(await runStatement(['--format', 'json'])) as Statement
  const org = s.organizations[0]
  t.equal(org.total.requests, raw.length, 'the total counts each request once')
  t.ok(same(org.total.billed_cost_usd, sumDecimals(raw.flatMap((r) => r.billed ?? []))))
  const groups = new Set(raw.flatMap((r) => r.groups))
  t.equal(org.groups.length, groups.size, 'one line per group')
  for (const g of org.groups) {
    const mine = raw.filter((r) => r.groups.includes(g.group_id))
    t.equal(g.requests, mine.length, `${g.group_id}: requests`)
    t.equal(g.members, new Set(mine.map((r) => r.user_id)).size, `${g.group_id}: members`)
    t.ok(same(g.billed_cost_usd, sumDecimals(mine.flatMap((r) => r.billed ?? []))), `${g.group_id}: billed to the digit`)
    t.ok(same(g.markup_usd, sumDecimals([g.billed_cost_usd, '-' + g.cost_usd])), `${g.group_id}: markup = billed - cost`)
  }
  const md = await runStatement([])
  t.match(md, /## By group/)
  t.match(md, /counts in each of those groups' lines; the total above counts it once/)
  const physics = org.groups.find((g) => g.group_id === 'Physics')!
  t.match(md, new RegExp(`\\| Physics \\| 2 \\| 5 \\| \\d+ \\| [\\d.]+ \\| [\\d.]+ \\| ${physics.billed_cost_usd.replace('.', '\\.')} \\|`))
  const [head, ...lines] = parseCsv(await runStatement(['--format', 'csv']))
  const col = (n: string): number => head.indexOf(n)
  const users = lines.filter((l) => l[0] === 'user')
  t.ok(same(sumDecimals(users.map((l) => l[col('billed_cost_usd')])), org.total.billed_cost_usd), 'user lines still add up to the total')
  const csvPhysics = lines.find((l) => l[0] === 'group' && l[col('group_id')] === 'Physics')!
  t.equal(csvPhysics[col('billed_cost_usd')], physics.billed_cost_usd)
  t.equal(csvPhysics[col('members')], '2')
})

t.test('a fold onto rollup rows that exist already adds each delta once', async (t) => {
  await db.sql`select usage_rollup_compact()`
  // The same group, user, model and kind as rows already folded: the compaction's upserts update.
  await rowGroups(plain, { 'x-openwebui-user-id': 'u-two', [HEADER]: 'Maths,Physics' })
  await db.sql`select usage_rollup_compact()`
  const raw = await ledger()
  const body = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=group`)).json()
  for (const g of ['Maths', 'Physics']) {
    const mine = raw.filter((r) => r.groups.includes(g))
    const row = body.data.find((r: any) => r.group === g)
    t.equal(row.requests, mine.length, `${g}: requests from the monthly group rollups`)
    t.ok(same(row.billed_cost_usd, sumDecimals(mine.flatMap((r) => r.billed ?? []))), `${g}: billed to the digit`)
    const days = (await get(plain, `/admin/v1/usage?from=${FROM}&to=${TO}&group_by=day&group=${g}`)).json()
    t.ok(same(days.totals.billed_cost_usd, sumDecimals(mine.flatMap((r) => r.billed ?? []))), `${g}: billed from the daily group rollups`)
  }
})
