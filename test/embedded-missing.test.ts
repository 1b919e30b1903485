import t from 'tap'
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { createLogger } from '../src/lib/log.js'
import { StartupError } from '../src/lib/startup-error.js'
import { PGLITE_MISSING, loadPglite, startEmbedded } from '../src/db/embedded.js'
import { TEST_KEY } from './support/test-key.js'
import { MAIN, childEnv, freePort } from './support/child.js'
import { spawnSync } from 'node:child_process'

// PGlite is an optional dependency (npm ci --omit=optional, the default Docker image): without it
// and without DATABASE_URL the sidecar stops at start-up with one line saying how to get either.

const notFound = (specifier: string) => Object.assign(new Error(`Cannot find package '${specifier}' imported from /app/dist/db/embedded.js`), { code: 'ERR_MODULE_NOT_FOUND' })

t.test('a missing package is a start-up error naming both ways out', async (t) => {
  const err = await loadPglite(async () => { throw notFound('@electric-sql/pglite') }).catch((e: unknown) => e)
  t.type(err, StartupError)
  t.equal((err as StartupError).variable, 'DATABASE_URL')
  t.equal((err as Error).message, PGLITE_MISSING)
  t.match(PGLITE_MISSING, /^DATABASE_URL: not set/)
  t.match(PGLITE_MISSING, '`npm install @electric-sql/pglite`', 'the install command')
  t.match(PGLITE_MISSING, '--build-arg EMBEDDED=1', 'and how to get it into the image')
  t.notMatch(PGLITE_MISSING, /\n/, 'one line')
})

t.test('any other failure to load it is passed on as it is', async (t) => {
  const broken = new TypeError('wasm: out of memory')
  t.equal(await loadPglite(async () => { throw broken }).catch((e: unknown) => e), broken)
})

t.test('startEmbedded stops before touching DATA_DIR when the package is missing', async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), 'no-pglite-')), 'data')
  await t.rejects(startEmbedded(dir, 0, createLogger('silent'), async () => { throw notFound('@electric-sql/pglite') }), { message: PGLITE_MISSING })
  t.notOk(existsSync(dir), 'no data directory made for a database that cannot run')
})

t.test('the sidecar process: no DATABASE_URL, PGlite unresolvable: exits 1 with the line on stderr', async (t) => {
  // A resolve hook makes the packages unresolvable in the child only, as an install without
  // optional dependencies would; node_modules stays as it is.
  const dir = mkdtempSync(join(tmpdir(), 'no-pglite-'))
  const hooks = join(dir, 'hooks.mjs')
  writeFileSync(hooks, `export async function resolve (specifier, context, next) {
  if (specifier.startsWith('@electric-sql/')) throw Object.assign(new Error('Cannot find package ' + specifier), { code: 'ERR_MODULE_NOT_FOUND' })
  return next(specifier, context)
}\n`)
  const register = join(dir, 'register.mjs')
  writeFileSync(register, `import { register } from 'node:module'\nregister(${JSON.stringify(pathToFileURL(hooks).href)})\n`)
  const r = spawnSync(process.execPath, ['--import', pathToFileURL(register).href, MAIN], {
    cwd: dir,
    encoding: 'utf8',
    timeout: 30_000,
    env: childEnv({
      OPENROUTER_API_KEY: TEST_KEY, OPENROUTER_EXTERNAL_USER: 'mai_client_nopglite', ORGANIZATION_NAME: 'No PGlite',
      PORT: String(await freePort()), HOST: '127.0.0.1', DATA_DIR: join(dir, 'data'), DATABASE_URL: undefined,
    }),
  })
  t.equal(r.status, 1, r.stderr)
  t.equal(r.stderr.trim().split('\n').filter((l) => l.startsWith('usage-proxy: ')).at(-1), `usage-proxy: ${PGLITE_MISSING}`)
})
