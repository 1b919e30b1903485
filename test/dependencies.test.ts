import t from 'tap'
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

// What package.json and package-lock.json promise: PGlite is optional (installed by a plain
// `npm ci`, left out by `--omit=optional`) and loaded by the embedded mode alone; postgres is
// pinned to the version whose internals src/lib/crash-guard.ts matches.

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const json = (p: string) => JSON.parse(readFileSync(join(root, p), 'utf8'))
const pkg = json('package.json')
const lock = json('package-lock.json')
const PGLITE = ['@electric-sql/pglite']

t.test('PGlite is an optional dependency, in package.json and the lock alike', async (t) => {
  t.same(Object.keys(pkg.optionalDependencies ?? {}), PGLITE, 'the only optional one')
  for (const name of PGLITE) {
    t.ok(pkg.optionalDependencies?.[name], `${name} optional`)
    t.notOk(pkg.dependencies?.[name], `${name} not a plain dependency`)
    t.equal(lock.packages[''].optionalDependencies?.[name], pkg.optionalDependencies?.[name], `${name}: the lock's root agrees`)
    const entry = lock.packages[`node_modules/${name}`]
    t.ok(entry?.version, `${name}: resolved in the lock, so a plain npm ci installs it`)
    t.equal(entry?.optional, true, `${name}: marked optional, so --omit=optional leaves it out`)
    t.notOk(entry?.dev, `${name}: not a dev dependency`)
  }
})

t.test('only src/db/embedded.ts loads PGlite, and only when called', async (t) => {
  const files = (readdirSync(join(root, 'src'), { recursive: true }) as string[]).filter((f) => f.endsWith('.ts')).map((f) => join(root, 'src', f))
  const text = (f: string) => readFileSync(f, 'utf8')
  // A type-only import is erased from the JavaScript; a static value import would load the
  // package with its module, and a missing package would stop the sidecar before it could say why.
  const staticImports = files.filter((f) => /^\s*(import|export)\s+(?!type\b)[^('"]*from\s+['"]@electric-sql\//m.test(text(f))).map((f) => relative(root, f))
  t.same(staticImports, [], 'no static import of PGlite anywhere')
  const loaders = files.filter((f) => /\bimport\(\s*['"]@electric-sql\//.test(text(f))).map((f) => relative(root, f))
  t.same(loaders, ['src/db/embedded.ts'], 'one dynamic import, in the embedded mode')
})

t.test('postgres is pinned exactly, to the version the lock resolves', async (t) => {
  const wanted = pkg.dependencies.postgres
  t.match(wanted, /^\d+\.\d+\.\d+$/, 'an exact version, no range')
  t.equal(lock.packages[''].dependencies.postgres, wanted)
  t.equal(lock.packages['node_modules/postgres'].version, wanted)
})
