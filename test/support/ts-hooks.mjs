// Module hooks for ts-loader.mjs. Imports name the emitted file ('./x.js'); a relative import of
// a .js file that does not exist resolves to the .ts beside it, as tsc's NodeNext resolution does.
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { transpiled } from './ts-cache.mjs'

const batched = process.env.TEST_BATCH === '1'
const batchTap = new URL('./batch-tap.mjs', import.meta.url).href

export async function resolve (specifier, context, next) {
  // Several files in one process (test/support/batch.mjs): a test file's `t` is its own subtest.
  if (batched && specifier === 'tap' && context.parentURL?.endsWith('.test.ts')) return { url: batchTap, shortCircuit: true }
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
  return { format: 'module', source: await transpiled(fileURLToPath(url)), shortCircuit: true }
}
