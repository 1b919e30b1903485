// Module hooks for ts-loader.mjs. Imports name the emitted file ('./x.js'); a relative import of
// a .js file that does not exist resolves to the .ts beside it, as tsc's NodeNext resolution does.
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const CACHE = join(ROOT, '.tap', 'ts-cache')
// The compiler's version is part of the key; the compiler itself loads only on a miss.
const TS_VERSION = JSON.parse(readFileSync(createRequire(import.meta.url).resolve('typescript/package.json'), 'utf8')).version
let ts = null

export async function resolve (specifier, context, next) {
  // A TypeScript file's relative import of './x.js' names the .ts beside it when no .js is there:
  // answered here, since asking the next resolver first costs a thrown error per module.
  if (context.parentURL?.endsWith('.ts') && /^\.\.?\/.*\.js$/.test(specifier)) {
    const js = new URL(specifier, context.parentURL)
    const ts = new URL(specifier.slice(0, -3) + '.ts', context.parentURL)
    if (!existsSync(js) && existsSync(ts)) return { url: ts.href, shortCircuit: true }
  }
  try {
    return await next(specifier, context)
  } catch (err) {
    if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !/^(\.|\/|file:).*\.js$/.test(specifier)) throw err
    return next(specifier.slice(0, -3) + '.ts', context)
  }
}

export async function load (url, context, next) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return next(url, context)
  const path = fileURLToPath(url)
  const source = readFileSync(path, 'utf8')
  const key = createHash('sha256').update(`${TS_VERSION}\0${path}\0${source}`).digest('hex')
  const file = join(CACHE, `${key}.js`)
  let code
  try {
    code = readFileSync(file, 'utf8')
  } catch {
    ts ??= await import('typescript').then((m) => m.default)
    code = ts.transpileModule(source, {
      fileName: path,
      compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext, esModuleInterop: true, inlineSourceMap: true, inlineSources: true },
    }).outputText
    mkdirSync(CACHE, { recursive: true })
    // Written aside and renamed: parallel test processes never read half a file.
    const tmp = `${file}.${process.pid}.tmp`
    writeFileSync(tmp, code)
    renameSync(tmp, file)
  }
  return { format: 'module', source: code, shortCircuit: true }
}
