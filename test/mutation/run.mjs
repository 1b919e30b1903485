#!/usr/bin/env node
// Mutation check, on demand (`npm run mutate`), not in CI: each entry below breaks the code on
// purpose, in one small place, and the named test files must then fail. A break the tests do not
// notice means a claim nothing checks. Everything happens in a copy of the tree (a temp dir with
// node_modules linked in), so a crash never leaves src/ mutated.
//
// Usage: npm run mutate [-- name-filter]   (MUTATE_TESTS: see below)
import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { BREAKS } from './breaks.mjs'

const root = resolve(import.meta.dirname, '..', '..')
const filter = process.argv[2]
// breaks.mjs, then one file per area in breaks/ (each exports BREAKS), so parallel work adds
// breaks without touching one shared list.
const dir = join(import.meta.dirname, 'breaks')
const more = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.mjs')).sort() : []
const all = [...BREAKS]
for (const f of more) all.push(...(await import(join(dir, f))).BREAKS)
// An entry naming a file that is gone would make the baseline fail for a reason nobody reads:
// say which, and stop before anything runs.
const gone = [...new Set(all.flatMap((b) => [b.file, ...b.tests]))].filter((f) => !existsSync(join(root, f)))
if (gone.length > 0) {
  console.error(`mutation: these files named by breaks do not exist: ${gone.join(' ')}`)
  process.exit(1)
}
// MUTATE_TESTS=a.test.ts,b.test.ts keeps the breaks that name one of those files: after a change
// to some tests, the breaks that rely on them.
const touching = process.env.MUTATE_TESTS?.split(',').filter(Boolean) ?? []
const breaks = all.filter((b) => (!filter || b.name.includes(filter)) && (touching.length === 0 || b.tests.some((f) => touching.includes(f))))

const copy = mkdtempSync(join(tmpdir(), 'usage-proxy-mutate-'))
// web/ and README.md are read at run time (the admin page, the config table), scripts/ checks
// the WebAssembly build, and the deploy and dependency tests read the Dockerfile, compose file and
// lockfile, so tests need them too.
for (const entry of ['src', 'test', 'sql', 'web', 'docs', 'scripts', 'README.md', 'package.json', 'package-lock.json', 'Dockerfile', '.dockerignore', 'compose.example.yml', 'tsconfig.json', 'tsconfig.build.json']) {
  if (existsSync(join(root, entry))) cpSync(join(root, entry), join(copy, entry), { recursive: true })
}
symlinkSync(join(root, 'node_modules'), join(copy, 'node_modules'), 'dir')
const cleanup = () => rmSync(copy, { recursive: true, force: true })
process.on('SIGINT', () => { cleanup(); process.exit(130) })

// Tests that spawn the sidecar as a process run dist/: the copy is compiled, and again after
// each break in src/ (and after putting it back).
function build (mustTypeCheck = true) {
  // tsc still emits when a break does not type-check; then the tests judge it.
  const r = spawnSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: copy, encoding: 'utf8' })
  if (mustTypeCheck && r.status !== 0) throw new Error(`build failed in the copy: ${r.stdout}${r.stderr}`)
}

// A break in WebAssembly text is compiled to the module the code loads (json-strings-wasm.ts),
// as `npm run wasm` does; else only the test that the two agree would see it.
function wasm () {
  const r = spawnSync(process.execPath, ['scripts/wasm.mjs'], { cwd: copy, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`npm run wasm failed in the copy: ${r.stdout}${r.stderr}`)
}

function runTests (files) {
  const r = spawnSync('npx', ['tap', '--disable-coverage', '-R', 'silent', '-t', '120', ...files], { cwd: copy, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0' } })
  return r.status === 0
}

const rows = []
try {
  // The unbroken tree must pass the files, or a "caught" break proves nothing.
  const files = [...new Set(breaks.flatMap((b) => b.tests))]
  build()
  const failing = files.filter((f) => !runTests([f]))
  if (failing.length > 0) {
    console.error(`baseline failed: ${failing.join(' ')} do not pass on the unbroken tree`)
    process.exitCode = 1
  } else {
    for (const b of breaks) {
      const path = join(copy, b.file)
      const original = readFileSync(path, 'utf8')
      let verdict
      if (!original.includes(b.search)) {
        verdict = 'STALE (search text not found)'
      } else {
        writeFileSync(path, original.replace(b.search, b.replace))
        const started = Date.now()
        const compiled = b.file.startsWith('src/')
        try {
          if (b.file.endsWith('.wat')) wasm()
          if (compiled) build(false)
          verdict = runTests(b.tests) ? 'SURVIVED' : 'caught'
        } finally {
          writeFileSync(path, original)
          if (b.file.endsWith('.wat')) wasm()
          if (compiled) build()
        }
        verdict += ` (${((Date.now() - started) / 1000).toFixed(0)} s)`
      }
      rows.push([b.name, b.file, verdict])
      console.log(`${verdict.startsWith('caught') ? 'ok  ' : 'FAIL'} ${b.name}: ${verdict}`)
    }
  }
} finally {
  cleanup()
}

if (rows.length > 0) {
  const w = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i].length), ['break', 'file', 'verdict'][i].length))
  const line = (r) => r.map((c, i) => c.padEnd(w[i])).join('  ')
  console.log('\n' + line(['break', 'file', 'verdict']))
  console.log(w.map((n) => '-'.repeat(n)).join('  '))
  for (const r of rows) console.log(line(r))
  const bad = rows.filter((r) => !r[2].startsWith('caught'))
  console.log(`\n${rows.length - bad.length}/${rows.length} breaks caught`)
  if (bad.length > 0) process.exitCode = 1
}
