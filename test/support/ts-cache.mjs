// The transpile cache of the suite's TypeScript: each .ts file is transpiled once (TypeScript's
// transpileModule, types stripped, no type check: `npm test` runs tsc for that) and kept under
// .tap/ts-cache, keyed by the compiler's version and the file's path and content. Used by the
// module hooks (ts-hooks.mjs) and, ahead of a run, by test/run.mjs, so one process pays for the
// compiler instead of the first few test processes each loading it for the same files.
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const CACHE = join(ROOT, '.tap', 'ts-cache')
// The compiler's version is part of the key; the compiler itself loads only on a miss.
const TS_VERSION = JSON.parse(readFileSync(createRequire(import.meta.url).resolve('typescript/package.json'), 'utf8')).version
let ts = null

/** The JavaScript for the TypeScript file at `path`, from the cache or transpiled into it. */
export async function transpiled (path) {
  const source = readFileSync(path, 'utf8')
  const key = createHash('sha256').update(`${TS_VERSION}\0${path}\0${source}`).digest('hex')
  const file = join(CACHE, `${key}.js`)
  try {
    return readFileSync(file, 'utf8')
  } catch {}
  ts ??= await import('typescript').then((m) => m.default)
  const code = ts.transpileModule(source, {
    fileName: path,
    compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext, esModuleInterop: true, inlineSourceMap: true, inlineSources: true },
  }).outputText
  mkdirSync(CACHE, { recursive: true })
  // Written aside and renamed: parallel test processes never read half a file.
  const tmp = `${file}.${process.pid}.tmp`
  writeFileSync(tmp, code)
  renameSync(tmp, file)
  return code
}
