import t from 'tap'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { TEST_KEY, baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { loadConfig } from '../src/config/config.js'
import { withEnvFile } from '../src/config/env-file.js'
import { KNOWN_VARIABLES, PREFIXES, editDistance, unknownVariables } from '../src/config/unknown-variables.js'
import { bannerLines, serverOf, type BannerFacts } from '../src/ops/banner.js'

// The start-up banner: where a chat app points, the admin page, the database, every budget and
// limit with its source, the environment's budgets the admin API overrides, and the variables
// meant for usage-proxy that it does not read. Never a secret.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const PROXY_KEY = 'proxy-key-0123456789abcdef'
const PASSWORD = 'pg-pass-w0rd-secret'

let fake: FakeOpenRouter
let db: TestDb
t.before(async () => {
  fake = await new FakeOpenRouter(11).start()
  db = await createTestDb({ migrated: true })
})
t.teardown(async () => { await fake?.close(); await db?.drop() })

interface Line { level: number, msg: string, [k: string]: unknown }
const lines = (s: Started): Line[] => s.logs.text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Line)
const WARN = 40
const INFO = 30

/** The test database's URL with a password in it (trust authentication ignores it) and a parameter. */
function urlWithPassword (url: string): string {
  const u = new URL(url)
  u.password = PASSWORD
  u.searchParams.set('application_name', 'banner-test')
  return u.toString()
}

const configOf = (extra: Record<string, string> = {}) => loadConfig({
  OPENROUTER_API_KEY: TEST_KEY, OPENROUTER_EXTERNAL_USER: 'mai_client_63a4eb6d', ORGANIZATION_NAME: 'Acme', HOST: '127.0.0.1', ...extra,
})
const facts = (f: Partial<BannerFacts>): BannerFacts => ({
  config: configOf(), port: 8787, embeddedDir: null, budgets: [], userBudgets: 0, budgetsError: null, unknown: [], ...f,
})
const text = (f: BannerFacts): string[] => bannerLines(f).map((l) => `${l.level} ${l.msg}`)

t.test('a sidecar started with budgets, limits and a typo says so, once it is ready; an override shows after a restart', async (t) => {
  const own = await createTestDb({ migrated: true }) // the admin API's budgets stay in it
  const env = baseEnv(fake, urlWithPassword(own.url), {
    ADMIN_API_KEY: ADMIN_KEY, PROXY_API_KEY: PROXY_KEY, ORG_BUDGET_USD: '100.00', USER_BUDGET_USD: '2', USER_BUDGET_PERIOD: 'day',
    USER_MAX_CONCURRENT: '3', USER_RMP: '5',
  })
  let s = await startSidecar(env)
  t.teardown(async () => { await s.sidecar.stop('test end'); await own.drop() })
  const first = lines(s)
  const msg = (re: RegExp): Line | undefined => first.find((l) => re.test(l.msg))
  t.match(msg(/^chat apps:/), { level: INFO, msg: `chat apps: base URL http://127.0.0.1:${s.sidecar.port}/v1, API key: the value of PROXY_API_KEY` })
  t.match(msg(/^admin page:/), { level: INFO, msg: `admin page: http://127.0.0.1:${s.sidecar.port}/admin/ (sign in with ADMIN_API_KEY)` })
  const dbLine = msg(/^database:/)
  t.equal(dbLine?.msg, `database: PostgreSQL at 127.0.0.1:${own.port}/${own.name} (DATABASE_URL)`, 'host:port/dbname, nothing else')
  t.match(msg(/^budget: the organization:/), { level: INFO, msg: 'budget: the organization: 100 USD per month (env ORG_BUDGET_USD)' })
  t.match(msg(/^budget: every user/), { level: INFO, msg: 'budget: every user without a budget of their own: 2 USD per day (env USER_BUDGET_USD)' })
  t.match(msg(/^limit:/), { level: INFO, msg: 'limit: 3 requests at a time per user (env USER_MAX_CONCURRENT)' })
  t.match(msg(/^unknown variable USER_RMP/), { level: WARN, msg: 'unknown variable USER_RMP in the environment: usage-proxy does not read it; did you mean USER_RPM?', suggestion: 'USER_RPM' })
  t.notOk(first.some((l) => /overridden/.test(l.msg)), 'nothing is overridden yet')
  const readyAt = first.findIndex((l) => l.msg === 'ready')
  t.ok(readyAt >= 0 && readyAt < first.indexOf(msg(/^chat apps:/)!), 'after boot')

  // The admin API takes over the organization's budget and adds a user's: after a restart with
  // the same environment, the banner shows what is in effect and warns about ORG_BUDGET_USD.
  for (const [path, body] of [['/admin/v1/budgets/organization', { limit_usd: '50', period: 'week' }], ['/admin/v1/budgets/users/alice', { limit_usd: '3.5', period: 'month' }]] as const) {
    const res = await request(s.url + path, { method: 'PUT', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })
    t.equal(res.statusCode, 200, path)
    await res.body.dump()
  }
  await s.sidecar.stop('restart')
  s = await startSidecar(env)
  const second = lines(s)
  t.match(second.find((l) => /overridden/.test(l.msg)), {
    level: WARN,
    msg: 'budget: ORG_BUDGET_USD=100 (ORG_BUDGET_PERIOD=month) is overridden: the admin API set it to 50 USD per week, ' +
      'and what the admin API sets stands until it sets another (PUT /admin/v1/budgets/organization)',
  })
  t.ok(second.some((l) => l.msg === 'budget: the organization: 50 USD per week (admin API)'), 'what is in effect, and from where')
  t.ok(second.some((l) => l.msg === 'budget: user alice: 3.5 USD per month (admin API)'), 'a user budget')
  t.ok(second.some((l) => l.msg === 'budget: every user without a budget of their own: 2 USD per day (env USER_BUDGET_USD)'), 'the untouched env budget is no warning')
  t.equal(second.filter((l) => /overridden/.test(l.msg)).length, 1, 'one override, one warning')

  const all = s.logs.text + first.map((l) => JSON.stringify(l)).join('\n')
  for (const secret of [TEST_KEY, ADMIN_KEY, PROXY_KEY, PASSWORD]) t.notOk(all.includes(secret), `${secret.slice(0, 8)}… is never logged`)
})

t.test('USER_RMP in a .env file: a warning naming the file, with the name it meant', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'banner-env-'))
  writeFileSync(join(dir, '.env'), 'USER_RMP=5\nORG_BUDGET_USD=7\nOPENROUTER_API_KEY_OLD=sk-or-v1-secret-in-file-0000\n')
  const env = withEnvFile(baseEnv(fake, db.url), join(dir, '.env')) as Record<string, string>
  const s = await startSidecar(env)
  t.teardown(() => s.sidecar.stop('test end'))
  const got = lines(s)
  t.match(got.find((l) => /USER_RMP/.test(l.msg)), { level: WARN, msg: 'unknown variable USER_RMP in .env: usage-proxy does not read it; did you mean USER_RPM?', source: '.env' })
  t.match(got.find((l) => /OPENROUTER_API_KEY_OLD/.test(l.msg)), { level: WARN, msg: /^unknown variable OPENROUTER_API_KEY_OLD in \.env: usage-proxy does not read it/ })
  t.ok(got.some((l) => l.msg === 'budget: the organization: 7 USD per month (env ORG_BUDGET_USD)'), 'the file\'s known variables apply')
  t.match(got.find((l) => /^admin page:/.test(l.msg)), { msg: 'admin page: off (set ADMIN_API_KEY to turn it and /admin/v1 on)' })
  t.match(got.find((l) => /^chat apps:/.test(l.msg)), { msg: /any API key \(PROXY_API_KEY is not set\)$/ })
  t.notOk(s.logs.text.includes('sk-or-v1-secret-in-file-0000'), 'an unknown variable\'s value is never shown')
  t.equal(got.filter((l) => l.msg.startsWith('unknown variable')).length, 2, 'nothing else is unknown')
})

t.test('unknown variables: the project\'s prefixes and near misses, not the rest of the environment', async (t) => {
  const names = (env: Record<string, string>, file: string[] = []) => unknownVariables(env, new Set(file))
  t.same(names({ USER_RMP: '5' }), [{ name: 'USER_RMP', source: 'environment', suggestion: 'USER_RPM' }])
  t.same(names({ user_rpm: '5' }), [{ name: 'user_rpm', source: 'environment', suggestion: 'USER_RPM' }], 'names are case-sensitive')
  t.same(names({ log_level: 'debug' }), [{ name: 'log_level', source: 'environment', suggestion: 'LOG_LEVEL' }], 'whatever the first word')
  t.same(names({ USAGE_PROXY_PORT: '9000' }), [{ name: 'USAGE_PROXY_PORT', source: 'environment', suggestion: 'PORT' }])
  t.same(names({ BUDGET_FAILMODE: 'open' }, ['BUDGET_FAILMODE']), [{ name: 'BUDGET_FAILMODE', source: '.env', suggestion: 'BUDGET_FAIL_MODE' }])
  t.same(names({ LOG_LEVL: 'debug', DB_CONECT_RETRY_MAX_MS: '5' }).map((u) => u.suggestion), ['DB_CONNECT_RETRY_MAX_MS', 'LOG_LEVEL'], 'a near miss, whatever its first word')
  t.same(names({ ADMIN_EMAIL: 'x@example.com' }), [{ name: 'ADMIN_EMAIL', source: 'environment', suggestion: null }], 'prefixed and far from every name: no guess')
  const innocent = {
    NODE_ENV: 'production', NODE_OPTIONS: '--max-old-space-size=512', NODE_EXTRA_CA_CERTS: '/ca.pem', HOME: '/root', PATH: '/bin', HOSTNAME: 'box', USER: 'root',
    LOGNAME: 'root', PWD: '/', DB_HOST: 'db', DB_PASSWORD: 'x', APP_ENV: 'prod', npm_config_cache: '/tmp', POSTGRES_PASSWORD: 'x', WEBUI_SECRET_KEY: 'x',
    OPENAI_API_KEY: 'x', ENABLE_FORWARD_USER_INFO_HEADERS: 'true', TEST_DATABASE_URL: 'postgres://x', BUDGET_MODEL_SEED: '1', LEDGER_PROFILE_DIR: '/tmp',
    USAGE_PROXY_SERVICE_HOST: '10.0.0.1', USAGE_PROXY_PORT: 'tcp://10.0.0.1:8787', USAGE_PROXY_PORT_8787_TCP_ADDR: '10.0.0.1',
  }
  t.same(names(innocent), [], 'the rest of a process environment, Kubernetes service links and the suite\'s own knobs')
  t.same(names(Object.fromEntries(KNOWN_VARIABLES.map((k) => [k, 'x']))), [], 'every variable the sidecar reads is known')
  t.equal(names({ USAGE_PROXY_SERVICE_HOST: '10.0.0.1' }, ['USAGE_PROXY_SERVICE_HOST']).length, 1, 'a service link written into .env by hand is named')
  for (const p of PREFIXES.filter((p) => p !== 'USAGE_PROXY_')) t.ok(KNOWN_VARIABLES.some((k) => k.startsWith(p)), `${p} is a prefix the schema uses`)
  t.equal(editDistance('USER_RMP', 'USER_RPM'), 1, 'a swap is one edit')
  t.equal(editDistance('ORG_BUDGET_USD', 'ORG_BUDGET_USD'), 0)
  t.equal(editDistance('', 'ABC'), 3)
  t.equal(editDistance('KITTEN', 'SITTING'), 3)
})

t.test('the documented variables draw no warning', async (t) => {
  const documented = new Set<string>()
  for (const file of ['README.md', 'compose.example.yml']) {
    for (const m of readFileSync(file, 'utf8').matchAll(/\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b/g)) {
      // {{USER_GROUPS}} and the like are Open WebUI's header templates, not our variables.
      if (!/\{\{\s*$/.test(m.input!.slice(Math.max(0, m.index! - 4), m.index))) documented.add(m[0])
    }
  }
  documented.delete('USER_RMP') // README's own example of a typo
  t.same(unknownVariables(Object.fromEntries([...documented].map((n) => [n, 'x']))).map((u) => u.name), [])
})

t.test('bannerLines: every listening address, the embedded database, many user budgets, nothing configured', async (t) => {
  const all = text(facts({ config: configOf({ HOST: '0.0.0.0', PROXY_API_KEY: PROXY_KEY, ADMIN_API_KEY: ADMIN_KEY }), embeddedDir: '/srv/data/pglite' }))
  t.match(all[0], /^info chat apps: base URL http:\/\/<this machine's address>:8787\/v1, API key: the value of PROXY_API_KEY \(HOST=0\.0\.0\.0 listens on every interface: http:\/\/127\.0\.0\.1:8787\/v1 from this machine/)
  t.equal(all[1], 'info admin page: http://127.0.0.1:8787/admin/ (sign in with ADMIN_API_KEY)')
  t.equal(all[2], 'info database: embedded PostgreSQL in /srv/data/pglite (for trying usage-proxy out; set DATABASE_URL for production)')
  t.equal(all[3], 'info budgets and limits: none (ORG_BUDGET_USD, USER_BUDGET_USD, USER_RPM, USER_MAX_CONCURRENT or /admin/v1/budgets set them)')
  t.equal(all.length, 4)
  t.equal(text(facts({ config: configOf({ HOST: '::1' }) }))[0], 'info chat apps: base URL http://[::1]:8787/v1, any API key (PROXY_API_KEY is not set)')

  const many = text(facts({
    config: configOf({ USER_RPM: '60', BUDGET_FAIL_MODE: 'closed' }),
    budgets: [{ scope: 'user', userId: 'ann', limitUsd: '1.50', period: 'day', source: 'api' }, { scope: 'user', userId: 'bob', limitUsd: '0.0025', period: 'total', source: 'api' }],
    userBudgets: 12,
  }))
  t.same(many.filter((l) => /budget|limit/.test(l)), [
    'info budget: user ann: 1.5 USD per day (admin API)',
    'info budget: user bob: 0.0025 USD in total (admin API)',
    'info budgets: 10 more user budgets (GET /admin/v1/budgets lists them all)',
    'info limit: 60 requests per minute per user (env USER_RPM)',
    'info budgets: when PostgreSQL cannot be asked, BUDGET_FAIL_MODE=closed answers 503',
  ])
})

t.test('bannerLines: an env budget the admin API removed or changed warns; the same value does not; an unreadable table says so', async (t) => {
  const config = configOf({ ORG_BUDGET_USD: '20', USER_BUDGET_USD: '5', USER_BUDGET_PERIOD: 'week' })
  const removed = text(facts({ config, budgets: [{ scope: 'default-user', userId: '', limitUsd: null, period: 'week', source: 'api' }, { scope: 'organization', userId: '', limitUsd: '20.000', period: 'month', source: 'api' }] }))
  t.same(removed.filter((l) => l.startsWith('warn')), [
    'warn budget: USER_BUDGET_USD=5 (USER_BUDGET_PERIOD=week) is overridden: the admin API removed it, and what the admin API sets stands until it sets another (PUT /admin/v1/budgets/default-user)',
  ], 'the organization\'s API budget equals the environment\'s: nothing is lost, nothing to warn about')
  t.notOk(removed.some((l) => /every user/.test(l)), 'a removed budget is not listed as in effect')
  const period = text(facts({ config, budgets: [{ scope: 'organization', userId: '', limitUsd: '20', period: 'day', source: 'api' }] }))
  t.match(period.find((l) => l.startsWith('warn')), /ORG_BUDGET_USD=20 \(ORG_BUDGET_PERIOD=month\) is overridden: the admin API set it to 20 USD per day/)
  const unread = text(facts({ config, budgetsError: 'DEADLINE: no answer' }))
  t.same(unread, [
    'info chat apps: base URL http://127.0.0.1:8787/v1, any API key (PROXY_API_KEY is not set)',
    'info admin page: off (set ADMIN_API_KEY to turn it and /admin/v1 on)',
    'warn budgets: could not be read for this summary (DEADLINE: no answer); the admission reads them on its own',
    'info budgets: when PostgreSQL cannot be asked, BUDGET_FAIL_MODE=open serves requests unchecked',
  ])
})

t.test('serverOf: host, port and database, never a user, password or parameter', async (t) => {
  t.equal(serverOf('postgres://app:s3cret@db.internal:6432/usage?sslmode=require&password=x'), 'db.internal:6432/usage')
  t.equal(serverOf('postgresql://app:p@ss/w@rd@db/usage'), 'db:5432/usage', 'a password with @ and / in it')
  t.equal(serverOf('postgres://db'), 'db:5432/(default database)')
  t.equal(serverOf('postgres://u@[::1]/x'), '[::1]:5432/x')
  t.equal(serverOf('postgres://u:pw@h1:5432,h2/x'), 'h1:5432,h2:5432/x', 'several hosts')
  t.equal(serverOf('postgres:///usage?host=/var/run/postgresql'), 'the local socket/usage')
  t.equal(serverOf('postgres://h/caf%C3%A9'), 'h:5432/café')
})
