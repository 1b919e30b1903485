// Compiles the WebAssembly text sources in src/ to TypeScript modules holding their bytes, so
// that the build needs no WebAssembly toolchain and the runtime reads no file:
//   npm run wasm            writes src/proxy/body/json-strings-wasm.ts from json-strings.wat
//   npm run wasm -- --check exits 1 when a written module does not match its source
import { readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import wabt from 'wabt'

const SOURCES = [['src/proxy/body/json-strings.wat', 'src/proxy/body/json-strings-wasm.ts']]
const root = fileURLToPath(new URL('..', import.meta.url))

export async function compile (watPath) {
  const w = await wabt()
  const module = w.parseWat(watPath, readFileSync(root + watPath, 'utf8'), { simd: true })
  module.validate()
  return Buffer.from(module.toBinary({}).buffer)
}

export function moduleText (watPath, bytes) {
  return `// Generated from ${watPath.replace('src/proxy/', '')} by \`npm run wasm\`: edit the source, not this file.\n` +
    `export const WASM = '${bytes.toString('base64')}'\n`
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const check = process.argv.includes('--check')
  let stale = 0
  for (const [wat, ts] of SOURCES) {
    const text = moduleText(wat, await compile(wat))
    let current = ''
    try { current = readFileSync(root + ts, 'utf8') } catch {}
    if (current === text) continue
    if (check) { console.error(`${ts} does not match ${wat}: run npm run wasm`); stale++ } else { writeFileSync(root + ts, text); console.log(`wrote ${ts}`) }
  }
  process.exitCode = stale ? 1 : 0
}
