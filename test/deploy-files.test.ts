import t from 'tap'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { existsSync, mkdtempSync, readdirSync, readFileSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, posix } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse as parseYaml } from 'yaml'
import { envSchema } from '../src/config/config.js'

// No Docker engine in CI: the Dockerfile and compose.example.yml are checked as text against the
// repository, the config schema and each other, and their health checks are run against a stub.

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const read = (p: string): string => readFileSync(join(root, p), 'utf8')

// ---- compose.example.yml --------------------------------------------------------------------

interface Service {
  image?: string
  build?: string | { context?: string }
  environment?: Record<string, unknown> | string[]
  env_file?: unknown
  depends_on?: Record<string, { condition?: string }> | string[]
  healthcheck?: { test?: string | string[] }
  volumes?: Array<string | { source?: string, target?: string }>
}
const composeText = read('compose.example.yml')
const compose = parseYaml(composeText) as { services: Record<string, Service>, volumes?: Record<string, unknown> }
const services = compose.services ?? {}

function envOf (s: Service | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  const env = s?.environment ?? {}
  if (Array.isArray(env)) {
    for (const item of env) { const i = item.indexOf('='); out[i === -1 ? item : item.slice(0, i)] = i === -1 ? '' : item.slice(i + 1) }
  } else {
    for (const [k, v] of Object.entries(env)) out[k] = v === null ? '' : String(v)
  }
  return out
}

function mountAt (s: Service | undefined, target: string): string | undefined {
  for (const v of s?.volumes ?? []) {
    if (typeof v === 'string') { const [source, to] = v.split(':'); if (to === target) return source }
    else if (v.target === target) return v.source
  }
  return undefined
}

function healthcheckCommand (s: Service | undefined): string {
  const test = s?.healthcheck?.test
  return Array.isArray(test) ? test.join(' ') : test ?? ''
}

const schemaKeys = new Set(Object.keys(envSchema.shape))
const requiredKeys = Object.entries(envSchema.shape).filter(([, schema]) => !schema.safeParse(undefined).success).map(([k]) => k)

t.test('compose: the three services', async (t) => {
  t.same(Object.keys(services).sort(), ['open-webui', 'postgres', 'usage-proxy'])
  t.match(services['open-webui']?.image, /^ghcr\.io\/open-webui\/open-webui:v\d+\.\d+\.\d+$/, 'open-webui pinned to a release')
  t.equal(services.postgres?.image, 'postgres:16-alpine')
  const build = services['usage-proxy']?.build
  t.equal(typeof build === 'string' ? build : build?.context, '.', 'usage-proxy is built from this repository')
})

t.test('compose: open-webui reaches usage-proxy and forwards who is asking', async (t) => {
  const env = envOf(services['open-webui'])
  t.equal(env.ENABLE_FORWARD_USER_INFO_HEADERS, 'true')
  t.notOk('ENABLE_PERSISTENT_CONFIG' in env, 'Open WebUI\'s default: admin changes survive a restart')
  t.equal(env.WEBUI_SECRET_KEY?.replace(/:\?[^}]*/, ''), '${WEBUI_SECRET_KEY}', 'sessions survive a recreated container')
  t.match(composeText, /\{\{TASK\}\}/, 'the task header to set on the connection is shown')
  t.match(composeText, /#\s*FORWARD_USER_INFO_HEADER_JWT_SECRET: \$\{FORWARD_USER_INFO_HEADER_JWT_SECRET/, 'the JWT wiring is shown')
  t.match(composeText, /docker compose exec postgres psql -U usage -d usage/, 'a psql one-liner')
  t.match(env.OPENAI_API_BASE_URL, /\/v1$/, 'Open WebUI does not append /v1 itself')
  const base = new URL(env.OPENAI_API_BASE_URL)
  t.equal(base.hostname, 'usage-proxy', 'the usage-proxy service')
  t.equal(base.port, '8787', 'on the port the image listens on')
  t.equal(env.OPENAI_API_KEY.replace(/:\?[^}]*/, ''), '${PROXY_API_KEY}', 'the key usage-proxy checks, from .env')
  t.same(services['open-webui']?.depends_on, { 'usage-proxy': { condition: 'service_healthy' } })
})

t.test('compose: usage-proxy is given only variables of the config schema', async (t) => {
  const s = services['usage-proxy']
  const env = envOf(s)
  t.notOk(s?.env_file, 'no env_file: it would hand over .env whole, POSTGRES_PASSWORD included')
  t.ok(Object.keys(env).length > 0)
  for (const name of Object.keys(env)) t.ok(schemaKeys.has(name), `${name} is in envSchema`)
  for (const name of requiredKeys) t.ok(env[name], `required ${name} is given`)
  for (const name of ['OPENROUTER_API_KEY', 'OPENROUTER_EXTERNAL_USER', 'ORGANIZATION_NAME', 'PROXY_API_KEY', 'MARKUP_PERCENT']) {
    t.match(env[name], new RegExp(`^\\$\\{${name}(:[-?][^}]*)?\\}$`), `${name} comes from .env`)
  }
  const pg = envOf(services.postgres)
  t.equal(
    env.DATABASE_URL,
    `postgres://${pg.POSTGRES_USER}:${pg.POSTGRES_PASSWORD}@postgres:5432/${pg.POSTGRES_DB}`,
    'DATABASE_URL names the postgres service, its user, password and database',
  )
  t.match(env.DATABASE_URL, /^postgres:\/\/usage:\$\{POSTGRES_PASSWORD[^}]*\}@postgres:5432\/usage$/)
  t.equal(env.DATA_DIR, '/data')
  const volume = mountAt(s, '/data')
  t.ok(volume && Object.hasOwn(compose.volumes ?? {}, volume), 'a named volume holds /data (the journal)')
  t.same(s?.depends_on, { postgres: { condition: 'service_healthy' } })
  t.match(healthcheckCommand(s), /node .*127\.0\.0\.1.*\/(healthz|readyz)/, 'health checked with node itself')
})

t.test('compose: postgres keeps its data and reports health', async (t) => {
  const s = services.postgres
  t.match(healthcheckCommand(s), /pg_isready/)
  const volume = mountAt(s, '/var/lib/postgresql/data')
  t.ok(volume && Object.hasOwn(compose.volumes ?? {}, volume), 'a named volume holds the database')
})

t.test('compose: no literal secrets', async (t) => {
  t.notMatch(composeText, /sk-or-v1-/, 'no OpenRouter key')
  for (const [name, s] of Object.entries(services)) {
    for (const [key, value] of Object.entries(envOf(s))) {
      if (/KEY|PASSWORD|SECRET|TOKEN|DATABASE_URL/.test(key)) t.match(value, /\$\{[A-Z_]+(:[-?][^}]*)?\}/, `${name}.${key} is interpolated from .env`)
    }
  }
  // Any other $ in a value would be interpolated by compose by surprise (comments are not).
  t.notMatch(JSON.stringify(compose).replace(/\$\{[A-Za-z_][A-Za-z0-9_]*(:[-?][^}]*)?\}/g, ''), /\$/, 'no stray $')
})

// ---- Dockerfile -------------------------------------------------------------------------------

interface Instruction { op: string, args: string, stage: number }
const instructions: Instruction[] = []
{
  let stage = -1
  const lines = read('Dockerfile').replace(/\\\r?\n/g, ' ').split('\n')
  for (const raw of lines) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const m = /^(\w+)\s+(.*)$/.exec(line)
    if (!m) continue
    const op = m[1].toUpperCase()
    if (op === 'FROM') stage++
    instructions.push({ op, args: m[2].trim(), stage })
  }
}
const stages = instructions.filter((i) => i.op === 'FROM').map((i) => i.args)
const last = stages.length - 1
const runtime = instructions.filter((i) => i.stage === last)
const one = (op: string): Instruction[] => runtime.filter((i) => i.op === op)
const json = (i: Instruction | undefined): unknown => { try { return JSON.parse(i?.args ?? '') } catch { return undefined } }
const flagOf = (args: string, flag: string): string | undefined => new RegExp(`--${flag}=(\\S+)`).exec(args)?.[1]

t.test('Dockerfile: node:24-slim stages, non-root, tini, node dist/main.js', async (t) => {
  t.ok(stages.length >= 2, 'multi-stage')
  for (const from of stages) t.match(from, /^node:24-slim(\s+AS\s+\w+)?$/i, `FROM ${from}`)
  const users = one('USER')
  t.ok(users.length > 0, 'a USER in the runtime stage')
  t.notMatch(users.at(-1)?.args ?? 'root', /^(root|0)(:|$)/, 'not root')
  t.same(json(one('ENTRYPOINT').at(-1)), ['/usr/bin/tini', '--'])
  t.ok(one('RUN').some((i) => /apt-get install\b.*\btini\b/.test(i.args) && /rm -rf \/var\/lib\/apt\/lists/.test(i.args)), 'tini installed, apt lists cleaned')
  t.same(json(one('CMD').at(-1)), ['node', '--max-semi-space-size=8', 'dist/main.js'])
  // The image runs the sidecar as `npm start` does, node flags included (docs/operations.md).
  const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string> }
  t.same(json(one('CMD').at(-1)), pkg.scripts.start.split(/\s+/), 'CMD is npm start\'s command')
  const env = one('ENV').map((i) => i.args).join(' ')
  for (const kv of ['NODE_ENV=production', 'DATA_DIR=/data', 'PORT=8787']) t.match(env, kv)
  t.ok(one('EXPOSE').some((i) => i.args.split(/\s+/).includes('8787')))
  t.ok(one('VOLUME').some((i) => /\/data\b/.test(i.args)))
  t.ok(one('RUN').some((i) => /chown\s+node(:node)?\s+\/data/.test(i.args)), '/data owned by node')
  t.ok(one('RUN').some((i) => /npm ci\b.*--omit=dev/.test(i.args)), 'production dependencies only')
  t.notOk(one('RUN').some((i) => /npm (ci|install)\b/.test(i.args) && !/--omit=dev/.test(i.args)), 'no dev dependencies')
  t.ok(instructions.some((i) => i.stage < last && i.op === 'RUN' && /npm run build/.test(i.args)), 'the build stage compiles')
  t.match(one('HEALTHCHECK').at(-1)?.args ?? '', /CMD \["node", "-e", .*\/healthz/, 'HEALTHCHECK with node itself')
})

t.test('Dockerfile: the embedded database (PGlite, optional) is in the image only with --build-arg EMBEDDED=1', async (t) => {
  t.ok(one('ARG').some((i) => i.args === 'EMBEDDED=0'), 'EMBEDDED, off by default')
  const install = one('RUN').find((i) => /npm ci\b/.test(i.args))!.args.split('&&')[0]
  // The install line as the image's /bin/sh expands it, for each value of the build arg.
  const flags = (embedded: string): string[] => execFileSync('sh', ['-c', `echo ${install}`], { env: { PATH: process.env.PATH, EMBEDDED: embedded }, encoding: 'utf8' }).trim().split(/\s+/)
  t.ok(flags('0').includes('--omit=optional'), 'by default optional dependencies are left out')
  t.notOk(flags('1').includes('--omit=optional'), 'EMBEDDED=1 installs them')
  t.ok(flags('1').includes('--omit=dev'), 'and never dev dependencies')
  const pkg = JSON.parse(read('package.json')) as { optionalDependencies?: Record<string, string> }
  t.same(Object.keys(pkg.optionalDependencies ?? {}), ['@electric-sql/pglite'], 'optional is exactly PGlite')
})

t.test('Dockerfile: every COPY source exists and is not excluded by .dockerignore', async (t) => {
  const ignore = read('.dockerignore').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'))
  const ignored = (p: string): boolean => {
    let out = false
    for (const pattern of ignore) {
      const negate = pattern.startsWith('!')
      const glob = (negate ? pattern.slice(1) : pattern).replace(/^\/+|\/+$/g, '')
      const re = new RegExp('^' + glob.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*') + '(/.*)?$')
      if (re.test(p)) out = !negate
    }
    return out
  }
  t.ok(ignored('node_modules') && ignored('.git') && ignored('.env') && ignored('test/cli.test.ts'), '.dockerignore keeps out node_modules, .git, .env, test')
  t.notOk(ignored('README.md'), 'README.md stays')
  const stageNames = stages.map((s) => /\s+AS\s+(\w+)$/i.exec(s)?.[1])
  let copies = 0
  for (const i of instructions.filter((i) => i.op === 'COPY' || i.op === 'ADD')) {
    const parts = i.args.split(/\s+/).filter((p) => !p.startsWith('--'))
    const from = flagOf(i.args, 'from')
    if (from) { t.ok(stageNames.includes(from), `COPY --from=${from} names an earlier stage`); continue }
    for (const src of parts.slice(0, -1)) {
      copies++
      const p = src.replace(/^\.\/|\/$/g, '')
      t.ok(existsSync(join(root, p)), `${src} exists in the repository`)
      t.notOk(ignored(p), `${src} is not excluded by .dockerignore`)
    }
  }
  t.ok(copies >= 3, 'the build copies sources from the repository')
})

t.test('Dockerfile: the CMD file is what the build emits, and its SQL sits where main.ts looks', async (t) => {
  // tsc -p tsconfig.build.json maps <rootDir>/main.ts to <outDir>/main.js
  const build = JSON.parse(read('tsconfig.build.json')) as { compilerOptions: { rootDir: string, outDir: string } }
  const emitted = (src: string): string => posix.join(build.compilerOptions.outDir, posix.relative(build.compilerOptions.rootDir, src)).replace(/\.ts$/, '.js')
  t.equal(emitted('src/main.ts'), 'dist/main.js')
  t.ok(existsSync(join(root, 'src/main.ts')))
  t.equal((json(one('CMD').at(-1)) as string[])?.at(-1), emitted('src/main.ts'), 'CMD runs the compiled main.ts')
  const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string> }
  t.equal(pkg.bin['usage-proxy'], emitted('src/cli.ts'), 'the bin is the compiled cli.ts')
  t.equal(read('src/cli.ts').split('\n')[0], '#!/usr/bin/env node')

  // the build stage's output directory is what the runtime stage copies
  const fromBuild = one('COPY').filter((i) => flagOf(i.args, 'from'))
  const workdir = (stage: number): string => instructions.filter((i) => i.stage === stage && i.op === 'WORKDIR').at(-1)?.args ?? '/'
  const builderStage = stages.findIndex((s) => new RegExp(`\\s+AS\\s+${flagOf(fromBuild[0]?.args ?? '', 'from')}$`, 'i').test(s))
  const [src, dest] = (fromBuild[0]?.args ?? '').split(/\s+/).filter((p) => !p.startsWith('--'))
  t.equal(src, posix.join(workdir(builderStage), build.compilerOptions.outDir), 'copies the build stage\'s dist/')
  const distInImage = posix.resolve(workdir(last), dest ?? '')
  const mainInImage = posix.resolve(workdir(last), emitted('src/main.ts'))
  t.equal(posix.dirname(mainInImage), distInImage, 'main.js lands where CMD looks for it')

  // src/main.ts: SQL_DIR = join(dirname(main.js), '..', 'sql')
  t.match(read('src/main.ts'), /const SQL_DIR = join\(dirname\(fileURLToPath\(import\.meta\.url\)\), '\.\.', 'sql'\)/)
  const sqlInImage = posix.join(posix.dirname(mainInImage), '..', 'sql')
  const sqlCopy = one('COPY').find((i) => !flagOf(i.args, 'from') && /^\.?\/?sql\/?$/.test(i.args.split(/\s+/)[0]))
  t.ok(sqlCopy, 'sql/ is copied')
  t.equal(posix.resolve(workdir(last), sqlCopy?.args.split(/\s+/).at(-1) ?? ''), sqlInImage, 'to where main.js reads its migrations')
  t.ok(readdirSync(join(root, 'sql')).some((f) => /^\d{3}_.*\.sql$/.test(f)), 'and there are migrations to copy')
})

// ---- the health checks run: against a stub that answers 200, then 503 -------------------------

function nodeScript (command: unknown): string {
  const argv = Array.isArray(command) ? command : []
  const i = argv.indexOf('-e')
  return i === -1 ? '' : String(argv[i + 1])
}

async function probe (script: string, status: number): Promise<{ code: number | null, paths: string[] }> {
  const paths: string[] = []
  const server = createServer((req, res) => { paths.push(req.url ?? ''); res.writeHead(status).end() })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  try {
    const port = (server.address() as AddressInfo).port
    const child = spawn(process.execPath, ['-e', script], { env: { PATH: process.env.PATH ?? '', PORT: String(port) }, stdio: 'ignore' })
    const code = await new Promise<number | null>((r) => child.on('exit', r))
    return { code, paths }
  } finally {
    server.close()
  }
}

t.test('the health checks pass on 200 and fail on 503', async (t) => {
  const dockerfileCheck = json({ ...one('HEALTHCHECK').at(-1)!, args: one('HEALTHCHECK').at(-1)!.args.replace(/^(--\S+\s+)*CMD\s+/, '') })
  const composeCheck = services['usage-proxy']?.healthcheck?.test
  t.equal(Array.isArray(composeCheck) && composeCheck[0], 'CMD')
  for (const [name, script, path] of [['Dockerfile', nodeScript(dockerfileCheck), '/healthz'], ['compose', nodeScript(composeCheck), '/readyz']] as const) {
    t.ok(script, `${name}: a node -e script`)
    const up = await probe(script, 200)
    t.equal(up.code, 0, `${name}: healthy on 200`)
    t.same(up.paths, [path], `${name}: asks ${path}`)
    t.equal((await probe(script, 503)).code, 1, `${name}: unhealthy on 503`)
  }
})

// ---- README's compose section and the files agree ----------------------------------------------

const readme = read('README.md')
const composeSection = ((): string => {
  const start = readme.indexOf('## Running with Docker Compose')
  return start === -1 ? '' : readme.slice(start, readme.indexOf('\n## ', start + 5) === -1 ? undefined : readme.indexOf('\n## ', start + 5))
})()

t.test('compose: every setting README\'s compose section names is in compose.example.yml', async (t) => {
  t.not(composeSection, '', 'README has a "Running with Docker Compose" section')
  const named = [...new Set([...composeSection.matchAll(/\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b/g)].map((m) => m[0]))].filter((n) => schemaKeys.has(n))
  t.ok(named.includes('ADMIN_API_KEY') && named.includes('USER_BUDGET_USD') && named.includes('USER_RPM'), 'the section speaks of the admin key, budgets and rate limits')
  // Optional ones may be commented out, but each is there to uncomment.
  for (const name of named) t.match(composeText, new RegExp(`^\\s*(#\\s*)?${name}: `, 'm'), `${name} is in compose.example.yml`)
  const env = envOf(services['usage-proxy'])
  for (const name of ['ADMIN_API_KEY', 'ORG_BUDGET_USD', 'ORG_BUDGET_PERIOD', 'USER_BUDGET_USD', 'USER_BUDGET_PERIOD', 'USER_RPM', 'USER_MAX_CONCURRENT']) {
    t.match(env[name], new RegExp(`^\\$\\{${name}:-[^}]*\\}$`), `${name} reaches the container from .env, empty (unset) by default`)
  }
})

t.test('compose: the admin page\'s port is published', async (t) => {
  const ports = ((services['usage-proxy'] as Service & { ports?: unknown[] }).ports ?? []).map(String)
  const containerPort = (p: string): string => p.split(':').at(-1)!.split('/')[0]
  t.ok(ports.some((p) => containerPort(p) === '8787' && p.split(':').length >= 2), `8787 published (${ports.join(', ')})`)
  t.match(composeSection, /http:\/\/localhost:8787\/admin\//, 'README says where the page is')
})

t.test('Dockerfile: usage-proxy is on PATH, and README shows statement and verify through compose', async (t) => {
  const link = one('RUN').map((i) => /ln -s\s+(\S+)\s+(\/usr\/local\/bin|\/usr\/bin)\/usage-proxy\b/.exec(i.args)).find(Boolean)
  t.ok(link, 'a link named usage-proxy in a PATH directory')
  const workdir = instructions.filter((i) => i.stage === last && i.op === 'WORKDIR').at(-1)?.args ?? '/'
  const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string> }
  const bin = posix.resolve(workdir, pkg.bin['usage-proxy'])
  t.equal(link?.[1], bin, 'it points at the bin of package.json, where the build puts it')
  t.ok(one('RUN').some((i) => new RegExp(`chmod\\s+(\\+x|7[0-7][0-7])\\s+(${pkg.bin['usage-proxy'].replace('.', '\\.')}|${bin.replace(/[./]/g, '\\$&')})`).test(i.args)),
    'and makes it executable (tsc writes 644)')
  t.equal(read('src/cli.ts').split('\n')[0], '#!/usr/bin/env node', 'the shebang runs it with node')
  for (const cmd of ['statement', 'verify']) t.match(composeSection, new RegExp(`docker compose exec usage-proxy usage-proxy ${cmd}\\b`), `README: ${cmd} through compose`)
  t.match(composeText, /docker compose exec usage-proxy usage-proxy statement/, 'and the compose file\'s header')

  // Run through a symlink as the image does: its imports resolve from the real file.
  const cli = join(root, 'dist', 'cli.js')
  if (!existsSync(cli)) return t.fail('dist/cli.js is built before the tests (npm test builds it)')
  t.equal(readFileSync(cli, 'utf8').split('\n')[0], '#!/usr/bin/env node', 'the build keeps the shebang')
  const dir = mkdtempSync(join(tmpdir(), 'usage-proxy-path-'))
  symlinkSync(cli, join(dir, 'usage-proxy'))
  const r = spawnSync(process.execPath, [join(dir, 'usage-proxy'), '--help'], { cwd: dir, env: { PATH: process.env.PATH ?? '' }, encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  t.match(r.stdout, /^usage: usage-proxy/)
})
