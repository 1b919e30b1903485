// The body scan alone, on the bench's bodies, with long strings read by the SIMD loop and by
// the JavaScript word loop (src/proxy/body/json-strings.ts): microseconds per scan, alternating.
//
//   npm run build && node bench/json-strings.js [--reps=300]
import { BodyScan } from '../dist/proxy/body/json-body.js'
import { tuneStrings } from '../dist/proxy/body/json-strings.js'
import { requestBody } from './load.js'

// The whole scan in one step, as the metered path runs it for a body that arrived at once.
function scanBody (raw) {
  const scan = new BodyScan(raw)
  scan.step()
  return scan.body
}

const reps = Number(process.argv.find((a) => a.startsWith('--reps='))?.slice(7) ?? 300)

for (const kind of ['chat500k', 'image4m', 'small']) {
  const body = Buffer.from(requestBody(false, kind))
  const n = kind === 'small' ? reps * 100 : reps
  const us = { simd: [], js: [] }
  for (let round = 0; round < 4; round++) {
    for (const mode of ['simd', 'js']) {
      tuneStrings({ simd: mode === 'simd' })
      for (let i = 0; i < n / 4; i++) scanBody(body) // warm up this path
      const t0 = process.hrtime.bigint()
      for (let i = 0; i < n; i++) if (!scanBody(body)) throw new Error('refused')
      us[mode].push(Number(process.hrtime.bigint() - t0) / n / 1e3)
    }
  }
  const med = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1]
  console.log(`${kind.padEnd(8)} ${String(body.length).padStart(8)} bytes  SIMD ${med(us.simd).toFixed(2)} us  JavaScript ${med(us.js).toFixed(2)} us  (${(med(us.js) / med(us.simd)).toFixed(2)}x)`)
}
