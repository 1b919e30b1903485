import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, LogSink } from './support/sidecar.js'
import { TcpRelay } from './support/tcp-relay.js'
import { start } from '../src/main.js'
import { createLogger } from '../src/lib/log.js'
import { migrate, statementsChecksum } from '../src/db/migrate.js'
import { mkdtempSync, writeFileSync, cpSync, readdirSync, readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter().start() })
t.teardown(async () => { await fake.close() })

/** Every migration the repository ships, in order: the list grows, the tests do not need to. */
const MIGRATIONS = readdirSync('sql').filter((f) => /^\d{3}_.*\.sql$/.test(f)).sort()

async function tables (db: TestDb) {
  const rows = await db.sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`
  return rows.map((r) => r.table_name)
}

t.test('fresh boot: schema, views and the organization row exist before /readyz is 200', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  const s = await startSidecar(baseEnv(fake, db.url))
  t.teardown(() => s.sidecar.stop())
  const all = await tables(db)
  t.same(all.filter((n) => !/^usage_events_(\d{4}_\d{2}|default)$/.test(n)), ['api_keys', 'audit_log', 'billing_customers', 'budget_counters', 'budget_reservations', 'budgets',
    'export_acks', 'export_cursors', 'export_leases', 'export_set_aside', 'export_stripe_attempts', 'export_stripe_totals', 'forget_secrets', 'forgotten_users', 'model_allowlists', 'organizations', 'rate_leases', 'rate_windows', 'schema_migrations',
    'spend_per_day', 'spend_per_group_month', 'spend_per_model_month', 'spend_per_user_month',
    'usage_daily_rollups', 'usage_daily_totals', 'usage_events', 'usage_generation_ids', 'usage_group_daily_rollups', 'usage_group_monthly_rollups', 'usage_group_rollup_deltas', 'usage_maintenance',
      'usage_monthly_rollups', 'usage_monthly_totals', 'usage_org_daily_rollups', 'usage_org_daily_totals', 'usage_rollup_deltas', 'user_mappings'])
  t.ok(all.includes('usage_events_default'), 'monthly partitions and the default one')
  const [org] = await db.sql`select id, name, markup_percent::text as markup, api_key_fingerprint from organizations`
  t.same([org.id, org.name, org.markup], ['mai_client_63a4eb6d', 'Acme GmbH', '12.5000'])
  t.match(org.api_key_fingerprint, /^sha256:/)
  const ready = await request(`${s.url}/readyz`)
  t.equal(ready.statusCode, 200)
  await ready.body.dump()
})

t.test('booting twice creates nothing twice; a changed environment updates the organization', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  const env = baseEnv(fake, db.url)
  const a = await startSidecar(env)
  await a.sidecar.stop()
  const b = await startSidecar({ ...env, ORGANIZATION_NAME: 'Acme AG', MARKUP_PERCENT: '20' })
  t.teardown(() => b.sidecar.stop())
  t.match(b.logs.text, /"applied":\[\]/, 'second boot applied no migration')
  const migrations = await db.sql`select name from schema_migrations order by name`
  t.same(migrations.map((m) => m.name), MIGRATIONS)
  const orgs = await db.sql`select name, markup_percent::text as m from organizations`
  t.same(orgs.map((o) => [o.name, o.m]), [['Acme AG', '20.0000']])
})

t.test('two sidecars booting at once against one database are both ready, schema applied once', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  const [a, b] = await Promise.all([startSidecar(baseEnv(fake, db.url)), startSidecar(baseEnv(fake, db.url))])
  t.teardown(() => Promise.all([a.sidecar.stop(), b.sidecar.stop()]))
  const [{ n }] = await db.sql`select count(*)::int as n from schema_migrations`
  t.equal(n, MIGRATIONS.length)
  const applied = [a, b].map((s) => /"applied":\[("[^\]]*)?\]/.exec(s.logs.text)![0])
  t.equal(applied.filter((x) => x.includes('001_schema')).length, 1, 'exactly one of them migrated')
})

t.test('an edited migration is refused rather than silently diverging', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  const dir = mkdtempSync(join(tmpdir(), 'mig-'))
  cpSync('sql', dir, { recursive: true })
  t.same((await migrate(db.sql, dir)).applied, MIGRATIONS)
  writeFileSync(join(dir, '002_billing_views.sql'), '-- edited\n')
  await t.rejects(migrate(db.sql, dir), /002_billing_views.sql changed after it was applied/)
})

t.test('a reworded comment is no edit; databases migrated under whole-text checksums keep booting', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  const dir = mkdtempSync(join(tmpdir(), 'mig-'))
  cpSync('sql', dir, { recursive: true })
  await migrate(db.sql, dir)
  const file = join(dir, '002_billing_views.sql')
  const text = readFileSync(file, 'utf8')
  writeFileSync(file, `-- a comment reworded\n${text.replace(/^--.*$/m, '-- and another')}`)
  t.same((await migrate(db.sql, dir)).applied, [], 'comment lines are not part of the checksum')
  // What a database migrated before statement checksums holds: the whole text's sha256, and for
  // 005 and 006 the text before their comments were reworded.
  await db.sql`update schema_migrations set checksum = ${createHash('sha256').update(readFileSync('sql/001_schema.sql', 'utf8')).digest('hex')} where name = '001_schema.sql'`
  await db.sql`update schema_migrations set checksum = '04507beecb5f2becb0ea4bceccc726aa8b823970addd41cdf66d72f082903943' where name = '006_budgets.sql'`
  t.same((await migrate(db.sql, dir)).applied, [], 'earlier checksums are accepted')
  await db.sql`update schema_migrations set checksum = ${'0'.repeat(64)} where name = '006_budgets.sql'`
  await t.rejects(migrate(db.sql, dir), /006_budgets.sql changed after it was applied/, 'an unknown earlier text is not')
  writeFileSync(join(dir, '001_schema.sql'), readFileSync('sql/001_schema.sql', 'utf8') + '\nselect 1;\n')
  await db.sql`update schema_migrations set checksum = ${statementsChecksum(readFileSync('sql/006_budgets.sql', 'utf8'))} where name = '006_budgets.sql'`
  await t.rejects(migrate(db.sql, dir), /001_schema.sql changed after it was applied/, 'a statement added is an edit')
})

t.test('Postgres down at boot: /readyz 503 and traffic refused, a log line says why, ready once it is up', async (t) => {
  // Not about migrating (the tests above are): the database starts from the migrated template.
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const relay = new TcpRelay(db.port)
  await relay.reserve()
  const logs = new LogSink()
  const env = baseEnv(fake, `${relay.url}/${db.name}`, { DB_CONNECT_RETRY_MAX_MS: '200', ADMIN_API_KEY: 'boot-admin-key-0123456789' })
  const s = await start(env, createLogger('debug', logs))
  t.teardown(async () => { await s.stop(); await relay.cut() })
  const url = `http://127.0.0.1:${s.port}`
  while (!/postgres unreachable, retrying/.test(logs.text)) await new Promise((r) => setTimeout(r, 20))
  const notReady = await request(`${url}/readyz`)
  t.equal(notReady.statusCode, 503)
  await notReady.body.dump()
  const health = await request(`${url}/healthz`)
  t.equal(health.statusCode, 200, 'alive while not ready')
  await health.body.dump()
  const refused = await request(`${url}/v1/chat/completions`, { method: 'POST', body: '{}' })
  t.equal(refused.statusCode, 503)
  t.match(await refused.body.json(), { error: { code: 'not_ready' } })
  const admin = await request(`${url}/admin/v1/`, { headers: { authorization: 'Bearer boot-admin-key-0123456789' } })
  t.equal(admin.statusCode, 503, 'the admin plane exists, and waits for the database too')
  t.match(await admin.body.json(), { error: { code: 'not_ready' } })
  t.match(logs.text, /postgres unreachable, retrying/)
  t.match(logs.text, /ECONNREFUSED/)
  await relay.open()
  await s.ready
  const ok = await request(`${url}/readyz`)
  t.equal(ok.statusCode, 200)
  await ok.body.dump()
  const adminReady = await request(`${url}/admin/v1/`, { headers: { authorization: 'Bearer boot-admin-key-0123456789' } })
  t.equal(adminReady.statusCode, 200, 'and answers once it is ready')
  await adminReady.body.dump()
})
