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
