import t from 'tap'
import type { SpawnSyncReturns } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseEnv } from 'node:util'
import { parse as parseYaml } from 'yaml'
import { loadConfig } from '../src/config/config.js'
import { createTestDb, type TestDb } from './support/db.js'
import { CLI, ensureBuilt, MAIN, ROOT as root, runNode, spawnNode } from './support/child.js'

// The CLI is tested as users run it: `node dist/cli.js ...`, a separate process.

const KEYS = ['ADMIN_API_KEY', 'MARKUP_PERCENT', 'OPENROUTER_API_KEY', 'OPENROUTER_EXTERNAL_USER', 'ORGANIZATION_NAME', 'POSTGRES_PASSWORD', 'PROXY_API_KEY', 'WEBUI_SECRET_KEY']
const REAL_KEY = 'sk-or-v1-0123456789abcdef0123456789abcdef'

// `npm test` builds dist/ before tap runs; a lone `npx tap test/cli.test.ts` builds it here.
t.before(ensureBuilt)

/** Runs the CLI with only PATH from this environment, in an empty directory (no .env). */
function cli (args: string[], env: Record<string, string> = {}): SpawnSyncReturns<string> {
  return runNode([CLI, ...args], env)
}

function genEnv (...args: string[]): { text: string, env: Record<string, string> } {
  const r = cli(['gen-env', ...args])
  if (r.status !== 0) throw new Error(`gen-env ${args.join(' ')} exited ${r.status}: ${r.stderr}`)
  return { text: r.stdout, env: parseEnv(r.stdout) as Record<string, string> }
}

/**
 * One `gen-env "Acme GmbH"` for the tests that check properties of an output, any output: run by
 * the first that asks (each run is a node process). The tests about fresh keys run it again.
 */
let acmeRun: SpawnSyncReturns<string> | undefined
const acmeRaw = (): SpawnSyncReturns<string> => (acmeRun ??= cli(['gen-env', 'Acme GmbH']))
function acme (): { text: string, env: Record<string, string> } {
  const r = acmeRaw()
  if (r.status !== 0) throw new Error(`gen-env Acme GmbH exited ${r.status}: ${r.stderr}`)
  return { text: r.stdout, env: parseEnv(r.stdout) as Record<string, string> }
}

t.test('gen-env prints only comments and KEY=value lines, each key once', async (t) => {
  const r = acmeRaw()
  t.equal(r.status, 0)
  t.equal(r.stderr, '')
  const keys: string[] = []
  for (const line of r.stdout.split('\n')) {
    if (line === '' || line.startsWith('# ')) continue
    const m = /^([A-Z][A-Z0-9_]*)=(\S.*)$/.exec(line)
    t.ok(m, `a KEY=value line: ${line}`)
    if (m) keys.push(m[1])
  }
  t.same([...keys].sort(), KEYS, 'exactly the variables compose.example.yml needs')
  t.equal(new Set(keys).size, keys.length, 'no key twice')
  const env = parseEnv(r.stdout)
  t.same(Object.keys(env).sort(), KEYS, 'node parses the same keys')
  t.equal(env.ORGANIZATION_NAME, 'Acme GmbH')
  t.equal(env.OPENROUTER_API_KEY, 'sk-or-v1-REPLACE_ME')
  t.equal(env.MARKUP_PERCENT, '0')
  t.match(env.PROXY_API_KEY, /^up-[A-Za-z0-9_-]{32}$/, 'up- and 24 random bytes in base64url')
  t.match(env.POSTGRES_PASSWORD, /^[A-Za-z0-9_-]{32}$/, 'URL-safe: it goes into DATABASE_URL as is')
})

t.test('the organization id is sha256 of the normalized name: deterministic, keys are fresh', async (t) => {
  const a = acme()
  const b = genEnv('Acme GmbH')
  const hex = createHash('sha256').update('acme gmbh').digest('hex').slice(0, 8)
  t.equal(a.env.OPENROUTER_EXTERNAL_USER, `mai_client_${hex}`)
  t.equal(b.env.OPENROUTER_EXTERNAL_USER, a.env.OPENROUTER_EXTERNAL_USER, 'same name, same id')
  const spaced = genEnv('  acme   GMBH ')
  t.equal(spaced.env.OPENROUTER_EXTERNAL_USER, a.env.OPENROUTER_EXTERNAL_USER, 'case and spacing do not matter')
  t.equal(spaced.env.ORGANIZATION_NAME, 'acme GMBH', 'the name is trimmed, its spacing collapsed')
  t.not(genEnv('Acme AG').env.OPENROUTER_EXTERNAL_USER, a.env.OPENROUTER_EXTERNAL_USER, 'another name, another id')
  t.not(b.env.PROXY_API_KEY, a.env.PROXY_API_KEY, 'a fresh proxy key every time')
  t.not(b.env.POSTGRES_PASSWORD, a.env.POSTGRES_PASSWORD, 'a fresh database password every time')
  t.not(a.env.PROXY_API_KEY.slice(3), a.env.POSTGRES_PASSWORD, 'two different secrets')
  t.equal(genEnv('Acme GmbH', '--prefix', 'acme').env.OPENROUTER_EXTERNAL_USER, `acme_${hex}`)
  t.equal(genEnv('--prefix=acme', 'Acme GmbH').env.OPENROUTER_EXTERNAL_USER, `acme_${hex}`)
})

t.test('gen-env output passes loadConfig once the key is replaced, directly and through compose', async (t) => {
  const { env } = acme()
  const config = loadConfig({ ...env, OPENROUTER_API_KEY: REAL_KEY })
  t.equal(config.organization.name, 'Acme GmbH')
  t.equal(config.organization.id, env.OPENROUTER_EXTERNAL_USER)
  t.equal(config.organization.markupPercent, '0')
  t.equal(config.server.proxyApiKey, env.PROXY_API_KEY)
  t.equal(config.openrouter.apiKey, REAL_KEY)

  // What the usage-proxy container gets: compose.example.yml's environment, interpolated from .env.
  const compose = parseYaml(readFileSync(join(root, 'compose.example.yml'), 'utf8'))
  const given: Record<string, string> = {}
  for (const [k, v] of Object.entries(compose.services['usage-proxy'].environment as Record<string, unknown>)) {
    given[k] = interpolate(String(v), { ...env, OPENROUTER_API_KEY: REAL_KEY })
  }
  const viaCompose = loadConfig(given)
  t.equal(viaCompose.organization.id, env.OPENROUTER_EXTERNAL_USER)
  t.equal(viaCompose.organization.name, 'Acme GmbH')
  t.equal(viaCompose.server.proxyApiKey, env.PROXY_API_KEY)
  const db = new URL(viaCompose.databaseUrl!)
  t.equal(db.password, env.POSTGRES_PASSWORD, 'the database password survives the URL unescaped')
  t.equal(db.hostname, 'postgres')
  // and Open WebUI presents the key usage-proxy expects
  t.equal(interpolate(compose.services['open-webui'].environment.OPENAI_API_KEY, env), env.PROXY_API_KEY)
})

t.test('every variable compose.example.yml requires is in gen-env output', async (t) => {
  // Commented-out lines (the optional JWT wiring) are not required.
  const text = readFileSync(join(root, 'compose.example.yml'), 'utf8').split('\n').filter((l) => !l.trim().startsWith('#')).join('\n')
  const { env } = acme()
  const required = [...text.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[?-])?/g)].filter((m) => m[2] !== ':-' && m[2] !== '-').map((m) => m[1])
  t.ok(required.length >= 5, 'compose interpolates its secrets')
  for (const name of new Set(required)) t.ok(env[name], `${name} is set by gen-env`)
})

t.test('values are unquoted: docker run --env-file, node and compose read the same value', async (t) => {
  // docker run --env-file takes everything after the first = literally, quotes included.
  const docker = (text: string): Record<string, string> => Object.fromEntries(text.split('\n')
    .filter((l) => l !== '' && !l.startsWith('#')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]))
  for (const name of ['Acme GmbH', 'Müller & Söhne GmbH', "O'Reilly Media", 'A "quoted" name', 'Smith & Partners (EU) Ltd.']) {
    const { text, env } = name === 'Acme GmbH' ? acme() : genEnv(name)
    t.equal(env.ORGANIZATION_NAME, name, `node reads back ${name}`)
    const d = docker(text)
    t.equal(d.ORGANIZATION_NAME, name, `docker run --env-file reads back ${name}`)
    t.same(d, env, 'docker and node read the same file alike')
    t.equal(interpolate(`\${ORGANIZATION_NAME}`, d), name, 'compose interpolation leaves it as is')
  }
  for (const name of ['Smith # Partners', 'Cost $HOME Ltd', 'Back\\slash', '"Quoted" Ltd']) {
    const r = cli(['gen-env', name])
    t.equal(r.status, 2, `${name}: refused`)
    t.equal(r.stdout, '', 'nothing half-written reaches the .env')
    t.match(r.stderr, /ORGANIZATION_NAME by hand/)
  }
})

t.test('gen-env writes the secrets compose needs, and a signed-identity secret to turn on', async (t) => {
  const { text, env } = acme()
  t.match(env.WEBUI_SECRET_KEY, /^[A-Za-z0-9_-]{32}$/, 'Open WebUI sessions survive a recreated container')
  t.not(env.WEBUI_SECRET_KEY, env.POSTGRES_PASSWORD)
  t.match(env.ADMIN_API_KEY, /^[A-Za-z0-9_-]{32}$/, 'the usage page\'s key: long enough for the schema')
  t.not(env.ADMIN_API_KEY, env.PROXY_API_KEY)
  t.match(text, /^# FORWARD_USER_INFO_HEADER_JWT_SECRET=[A-Za-z0-9_-]{32}$/m, 'commented out: only for app versions that sign')
})

t.test('usage errors exit 2 with a message on stderr', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['frobnicate'], /unknown command "frobnicate"/],
    [['gen-env'], /exactly one organization name/],
    [['gen-env', 'Acme', 'GmbH'], /exactly one organization name/],
    [['gen-env', '   '], /name is empty/],
    [['gen-env', 'Acme', '--prefix'], /--prefix needs a value/],
    [['gen-env', 'Acme', '--prefix', 'has space'], /--prefix must be/],
    [['gen-env', 'Acme', '--prefix', 'x'.repeat(92)], /--prefix must be/],
    [['gen-env', 'Acme', '--force'], /unknown option --force/],
    [['start', 'now'], /start takes no arguments/],
  ]
  for (const [args, message] of cases) {
    const r = cli(args)
    t.equal(r.status, 2, `${args.join(' ')} exits 2`)
    t.match(r.stderr, message)
    t.match(r.stderr, /usage-proxy --help/)
    t.equal(r.stdout, '', 'stdout stays clean (it may be redirected to .env)')
  }
})

t.test('--help prints usage and exits 0', async (t) => {
  for (const flag of ['--help', '-h', 'help']) {
    const r = cli([flag])
    t.equal(r.status, 0)
    t.match(r.stdout, /^usage: usage-proxy/)
    t.match(r.stdout, /gen-env "<Organization Name>" \[--prefix mai_client\]/)
  }
  t.match(cli(['gen-env', '--help']).stdout, /^usage: usage-proxy/)
})

t.test('gen-env takes a name after --, and refuses control characters', async (t) => {
  t.equal(genEnv('--', '-dash- Ltd').env.ORGANIZATION_NAME, '-dash- Ltd')
  const r = cli(['gen-env', 'Acme\u0007GmbH'])
  t.equal(r.status, 2)
  t.match(r.stderr, /control characters/)
})

t.test('the built entry points exist and start the sidecar', async (t) => {
  t.equal(readFileSync(CLI, 'utf8').split('\n')[0], '#!/usr/bin/env node', 'dist/cli.js keeps the shebang')
  for (const entry of [[CLI], [CLI, 'start'], [MAIN]]) {
    const r = runNode(entry)
    t.equal(r.status, 2, `${entry.map((p) => p.replace(root + '/', '')).join(' ')} without configuration exits 2`)
    t.match(r.stderr, /OPENROUTER_API_KEY is required/, 'reporting what is missing')
  }
})

t.test('a start that fails for another reason (port taken) exits 1 with one line naming PORT', async (t) => {
  const blocker = createServer()
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r))
  t.teardown(() => { blocker.close() })
  const { env } = acme()
  const r = await new Promise<{ code: number | null, stderr: string }>((resolve) => {
    const child = spawnNode([CLI, 'start'], { ...env, OPENROUTER_API_KEY: REAL_KEY, HOST: '127.0.0.1', PORT: String((blocker.address() as AddressInfo).port), LOG_LEVEL: 'silent', DATABASE_URL: 'postgres://u@127.0.0.1:9/x' })
    let stderr = ''
    child.stderr!.on('data', (c: Buffer) => { stderr += c.toString() })
    child.on('exit', (code) => resolve({ code, stderr }))
  })
  t.equal(r.code, 1)
  t.match(r.stderr, /^usage-proxy: PORT: port \d+ on 127\.0\.0\.1 is already in use \(EADDRINUSE\): .*set PORT to a free port\n$/, 'one line naming PORT')
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
})

t.test('`usage-proxy` runs the sidecar from gen-env output and stops cleanly on SIGTERM', async (t) => {
  let db: TestDb
  try {
    db = await createTestDb({ migrated: true })
  } catch (err) {
    t.fail(`no test Postgres (TEST_DATABASE_URL): ${String(err)}`)
    return
  }
  t.teardown(() => db.drop())
  const { env } = acme()
  const child = spawnNode([CLI], {
      ...env,
      OPENROUTER_API_KEY: REAL_KEY,
      DATABASE_URL: db.url,
      OPENROUTER_BASE_URL: 'http://127.0.0.1:9/api/v1',
      PORT: '0',
      HOST: '127.0.0.1',
      DATA_DIR: mkdtempSync(join(tmpdir(), 'usage-proxy-cli-')),
      LOG_LEVEL: 'info',
  })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  let out = ''
  let err = ''
  child.stderr!.on('data', (c: Buffer) => { err += c.toString() })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready within 20 s:\n${out}${err}`)), 20_000)
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString()
      for (const line of out.split('\n')) {
        if (!line.startsWith('{')) continue
        const log = JSON.parse(line) as { msg?: string, port?: number }
        if (log.msg === 'ready' && log.port) { clearTimeout(timer); resolve(log.port) }
      }
    })
    void exited.then((code) => { clearTimeout(timer); reject(new Error(`exited ${code} before ready:\n${out}${err}`)) })
  })
  const health = await fetch(`http://127.0.0.1:${port}/readyz`)
  t.equal(health.status, 200, 'ready')
  t.match(out, new RegExp(`"organization":"${env.OPENROUTER_EXTERNAL_USER}"`), 'the organization from .env')
  t.notMatch(out + err, env.PROXY_API_KEY, 'the proxy key is never logged')
  const [{ name }] = await db.sql<{ name: string }[]>`select name from organizations where id = ${env.OPENROUTER_EXTERNAL_USER}`
  t.equal(name, 'Acme GmbH', 'the organization row was upserted')
  child.kill('SIGTERM')
  t.equal(await exited, 0, 'SIGTERM stops it gracefully, exit 0')
})

/** Compose's interpolation, as far as compose.example.yml uses it: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$. */
function interpolate (value: string, vars: Record<string, string | undefined>): string {
  return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}/g, (whole, name?: string, op?: string, arg?: string) => {
    if (whole === '$$') return '$'
    const v = vars[name!]
    const set = op?.startsWith(':') ? v !== undefined && v !== '' : v !== undefined
    if (set) return v!
    if (op?.endsWith('-')) return arg ?? ''
    if (op?.endsWith('?')) throw new Error(`compose would refuse: ${name} ${arg}`)
    return ''
  })
}
