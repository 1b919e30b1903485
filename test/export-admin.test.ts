import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { FakeStripe } from './support/billing-receivers.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { runExport } from '../src/export/command.js'

// The export as an operator meets it: STRIPE_CUSTOMER_ID seeded (audited as env), customer
// mappings through /admin/v1/billing/customers (audited, validated), a request's row reaching
// Stripe under the mapped customer, lag and counts in /metrics, GET /admin/v1/export and
// `usage-proxy export status`, replay's warning, and the Stripe key in no log or answer.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const STRIPE_KEY = 'sk_test_adminexport0123456789'
const ORG = 'mai_client_63a4eb6d'
let fake: FakeOpenRouter
let stripe: FakeStripe
let db: TestDb
let on: Started
let env: Record<string, string | undefined>

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  stripe = new FakeStripe(STRIPE_KEY)
  const base = await stripe.listen()
  db = await createTestDb({ migrated: true })
  env = baseEnv(fake, db.url, {
    ADMIN_API_KEY: ADMIN_KEY, STRIPE_SECRET_KEY: STRIPE_KEY, STRIPE_API_BASE: base, STRIPE_CUSTOMER_ID: 'cus_OrgSeed1',
    EXPORT_POLL_MS: '20', EXPORT_LEASE_MS: '2000',
  })
  on = await startSidecar(env)
})
t.teardown(async () => {
  await on?.sidecar.stop('test end')
  await stripe?.close()
  await fake?.close()
  await db?.drop()
})

const auth = { authorization: `Bearer ${ADMIN_KEY}` }
async function call (method: 'GET' | 'PUT' | 'DELETE', path: string, body?: unknown) {
  const res = await request(on.url + path, { method, headers: { ...auth, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

async function waitFor (what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

t.test('customers: seeded from the environment, set, read, deleted, validated and audited', async (t) => {
  const org = await call('GET', '/admin/v1/billing/customers/organization')
  t.equal(org.body.stripe_customer_id, 'cus_OrgSeed1', 'STRIPE_CUSTOMER_ID seeds the organization')
  const [seeded] = await db.sql`SELECT actor, action, target FROM audit_log WHERE action = 'billing_customer.set' ORDER BY id LIMIT 1`
  t.same({ ...seeded }, { actor: 'env', action: 'billing_customer.set', target: 'billing/customers/organization' }, 'seeding is audited as env')

  const put = await call('PUT', '/admin/v1/billing/customers/users/u-anna', { stripe_customer_id: 'cus_Anna1' })
  t.equal(put.status, 200)
  t.same(put.body, { object: 'billing_customer', scope: 'user', user_id: 'u-anna', stripe_customer_id: 'cus_Anna1' })
  t.equal((await call('PUT', '/admin/v1/billing/customers/groups/sales', { stripe_customer_id: 'cus_Sales1' })).status, 200)
  t.equal((await call('GET', '/admin/v1/billing/customers/groups/sales')).body.stripe_customer_id, 'cus_Sales1')
  const bad = await call('PUT', '/admin/v1/billing/customers/users/u-anna', { stripe_customer_id: 'acct_123' })
  t.equal(bad.status, 400, 'not a customer id')
  t.equal(bad.body.error.code, 'invalid_billing_customer')
  t.equal((await call('PUT', '/admin/v1/billing/customers/users/u-anna', { stripe_customer_id: 'cus_x', extra: 1 })).status, 400, 'unknown field')
  t.equal((await call('PUT', '/admin/v1/billing/customers/users/u-anna', 'nope')).status, 400, 'not an object')
  const key = await call('PUT', '/admin/v1/billing/customers/keys/key_123', { stripe_customer_id: 'cus_Key1' })
  t.same(key.body, { object: 'billing_customer', scope: 'key', key_id: 'key_123', stripe_customer_id: 'cus_Key1' })
  t.equal((await call('PUT', '/admin/v1/billing/customers/keys/key_123', { stripe_customer_id: 'cus_Key1' })).status, 200, 'setting the same again')
  const list = await call('GET', '/admin/v1/billing/customers')
  t.equal(list.body.data.length, 4)
  t.equal((await call('DELETE', '/admin/v1/billing/customers/groups/sales')).status, 200)
  t.equal((await call('DELETE', '/admin/v1/billing/customers/groups/sales')).status, 404, 'a second delete finds nothing')
  t.equal((await call('GET', '/admin/v1/billing/customers/groups/sales')).status, 404)
  const trail = await db.sql<{ actor: string, action: string, target: string }[]>`SELECT actor, action, target FROM audit_log WHERE action LIKE 'billing_customer.%' ORDER BY id`
  t.same(trail.map((r) => `${r.action} ${r.target}`), [
    'billing_customer.set billing/customers/organization',
    'billing_customer.set billing/customers/users/u-anna',
    'billing_customer.set billing/customers/groups/sales',
    'billing_customer.set billing/customers/keys/key_123',
    'billing_customer.deleted billing/customers/groups/sales',
  ], 'every change, and only changes, audited')
  t.ok(trail.slice(1).every((r) => r.actor.startsWith('admin-key:')), 'by the admin key\'s fingerprint')
})

t.test('a request reaches Stripe under the user\'s customer; status, metrics, CLI', async (t) => {
  const res = await request(on.url + '/v1/chat/completions', {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-openwebui-user-id': 'u-anna' },
    body: JSON.stringify({ model: 'openai/gpt-4o', messages: [{ role: 'user', content: 'hi' }] }),
  })
  t.equal(res.statusCode, 200)
  await res.body.dump()
  await waitFor('the row at Stripe', () => stripe.events.size === 1)
  const [ev] = [...stripe.events.values()]
  const [row] = await db.sql<{ id: string, micro: string }[]>`SELECT generation_id AS id, round(billed_cost_usd * 1000000)::text AS micro FROM usage_events`
  t.equal(ev.identifier, row.id, 'identifier is the generation id')
  t.equal(ev.customer, 'cus_Anna1', 'the user\'s own customer wins over the organization\'s')
  t.equal(ev.value, row.micro, 'value is the billed cost in micro-USD')
  t.equal(ev.event_name, 'llm_usage')

  await waitFor('status to show it', async () => (await call('GET', '/admin/v1/export')).body.data[0].rows_sent === '1')
  const st = (await call('GET', '/admin/v1/export')).body.data[0]
  t.equal(st.sink, 'stripe')
  t.equal(st.pending, 0)
  t.equal(st.held_here, true)
  // The lag is the age of the oldest row of the last batch read; it is 0 again at the next read
  // that finds nothing pending, one poll after the delivery.
  const metricsText = async () => await (await request(on.url + '/metrics')).body.text()
  // On the embedded database the horizon read can keep the last batch's age; there the metric is
  // only checked to be there.
  if (!db.embedded) await waitFor('the lag to be back to 0', async () => /usage_proxy_export_lag_seconds\{sink="stripe"\} 0\n/.test(await metricsText()))
  const metrics = await metricsText()
  t.match(metrics, /usage_proxy_export_rows_sent_total\{sink="stripe"\} 1/)
  t.match(metrics, db.embedded ? /usage_proxy_export_lag_seconds\{sink="stripe"\} [0-9.e+-]+\n/ : /usage_proxy_export_lag_seconds\{sink="stripe"\} 0\n/)
  t.match(metrics, /usage_proxy_export_holding_lease\{sink="stripe"\} 1/)

  let out = ''
  let err = ''
  const code = await runExport(['status'], { DATABASE_URL: db.url, OPENROUTER_EXTERNAL_USER: ORG }, (s) => { out += s }, (s) => { err += s })
  t.equal(code, 0, err)
  t.match(out, /^stripe: 1 sent, 0 set aside, 0 waiting/m)
  out = ''; err = ''
  const dry = await runExport(['replay', '--sink', 'stripe', '--from', '2020-01-01', '--dry-run'], { ...env }, (s) => { out += s }, (s) => { err += s })
  t.equal(dry, 0, err)
  t.match(err, /35 days/, 'replay warns about Stripe\'s limits')
  t.equal(stripe.requests, 1, 'a dry run sends nothing')
  t.equal(await runExport(['replay', '--sink', 'nope', '--from', '2020-01-01'], { ...env }, () => {}, () => {}), 2, 'an unknown sink is a usage error')
  t.equal(await runExport(['replay', '--sink', 'stripe', '--from', 'yesterday'], { ...env }, () => {}, () => {}), 2, 'a bad date is a usage error')

  out = ''; err = ''
  const replayed = await runExport(['replay', '--sink=stripe', '--from=2020-01-01'], { ...env }, (s) => { out += s }, (s) => { err += s })
  t.equal(replayed, 0, err)
  t.match(out, /1 rows resent, 1 taken, 0 refused/)
  t.equal(stripe.events.size, 1, 'the resend came under the same identifier: still one event at Stripe')
  t.equal(stripe.posts.length, 2, 'sent twice on purpose')
  t.equal(stripe.accepted.length, 1, 'Stripe, still holding the identifier, refused the repeat as a duplicate, which counts as delivered')
  out = ''
  t.equal(await runExport(['status', '--json'], { DATABASE_URL: db.url, OPENROUTER_EXTERNAL_USER: ORG }, (s) => { out += s }, () => {}), 0)
  t.equal(JSON.parse(out)[0].rowsSent, '1', 'a replay does not count as the exporter\'s sending')
  t.equal(await runExport(['nope'], {}, () => {}, () => {}), 2, 'an unknown subcommand')
  t.equal(await runExport(['replay', '--from', '2020-01-01'], { ...env }, () => {}, () => {}), 2, 'replay without --sink')
  t.equal(await runExport(['status', '--bogus'], { ...env }, () => {}, () => {}), 2, 'an unknown option')
  t.equal(await runExport(['status'], { DATABASE_URL: db.url }, () => {}, () => {}), 2, 'no organization')

  t.notMatch(on.logs.text, STRIPE_KEY, 'the Stripe key is in no log line')
  t.notMatch(JSON.stringify(st), STRIPE_KEY)
  t.notMatch(metrics, STRIPE_KEY)
})
