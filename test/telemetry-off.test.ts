import t from 'tap'
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

// Without an OTLP endpoint the OpenTelemetry SDK is never loaded: no module of src/ imports it
// statically, and the one module that loads it (src/telemetry/sdk.ts) is itself only loaded on
// demand, by the sink's first batch.

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const files = (readdirSync(join(root, 'src'), { recursive: true }) as string[]).filter((f) => f.endsWith('.ts')).map((f) => join(root, 'src', f))
const text = (f: string): string => readFileSync(f, 'utf8')
// A static value import (or a bare side-effect import); `import type` is erased from the JavaScript.
const staticImport = (spec: string): RegExp => new RegExp(`^\\s*(import|export)\\s+(?!type\\b)([^('"]*from\\s+)?['"]${spec}`, 'm')

t.test('no module imports the SDK statically', async (t) => {
  t.same(files.filter((f) => staticImport('@opentelemetry/').test(text(f))).map((f) => relative(root, f)), [])
})

t.test('the SDK is loaded by one module, on demand, and that module is itself loaded on demand', async (t) => {
  const loaders = files.filter((f) => /\bimport\(\s*['"]@opentelemetry\//.test(text(f))).map((f) => relative(root, f))
  t.same(loaders, ['src/telemetry/sdk.ts'])
  t.same(files.filter((f) => staticImport('\\./sdk\\.js').test(text(f)) && f.includes('/telemetry/')).map((f) => relative(root, f)), [], 'sdk.ts is not imported statically')
  t.match(text(join(root, 'src/telemetry/otel-sink.ts')), /await import\('\.\/sdk\.js'\)/, 'the sink imports it when its first batch comes')
})

t.test('the SDK packages installed run on the Node the project supports (the 3.x line needs Node 22.15)', async (t) => {
  const pkg = JSON.parse(text(join(root, 'package.json')))
  const lock = JSON.parse(text(join(root, 'package-lock.json')))
  const supported = (pkg.engines.node as string).replace(/^>=/, '').split('.').map(Number)
  const atLeast = (v: number[], min: number[]): boolean => v[0] !== min[0] ? v[0] > min[0] : v[1] !== min[1] ? v[1] > min[1] : v[2] >= min[2]
  // The ranges the SDK's packages use (`^A.B.C || >=A.B.C`, `>=A`), read for one version.
  const admits = (range: string, v: number[]): boolean => range.split('||').some((part) => {
    const m = /^\s*(\^|>=)\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*$/.exec(part)
    if (!m) return false
    const min = [Number(m[2]), Number(m[3] ?? 0), Number(m[4] ?? 0)]
    return m[1] === '^' ? v[0] === min[0] && atLeast(v, min) : atLeast(v, min)
  })
  const sdk = Object.entries(lock.packages as Record<string, { version: string, engines?: { node?: string } }>).filter(([p]) => p.startsWith('node_modules/@opentelemetry/'))
  t.ok(sdk.length >= 5, 'the SDK is in the lock')
  for (const [name, entry] of sdk) {
    if (entry.engines?.node === undefined) continue
    t.ok(admits(entry.engines.node, supported), `${name.slice('node_modules/'.length)} ${entry.version} (${entry.engines.node}) runs on Node ${supported.join('.')}`)
  }
  for (const name of Object.keys(pkg.dependencies).filter((n) => n.startsWith('@opentelemetry/'))) {
    t.match(pkg.dependencies[name], /^\d+\.\d+\.\d+$/, `${name} pinned exactly: a caret would let npm move to a line that drops Node 20`)
  }
})
