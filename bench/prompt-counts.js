// The budgets' byte pass over a request body (src/budgets/prompt-counts.ts), which runs on the
// event loop for each admission that a budget applies to: microseconds per body, and what it
// counts. The image's base64 is skipped by indexOf; the chat is read byte by byte.
//
//   npm run build && node bench/prompt-counts.js [--reps=200]
import { countPrompt } from '../dist/budgets/prompt-counts.js'
import { requestBody } from './load.js'

const reps = Number(process.argv.find((a) => a.startsWith('--reps='))?.slice(7) ?? 200)

for (const kind of ['image4m', 'chat500k', 'small']) {
  const body = Buffer.from(requestBody(false, kind))
  const n = kind === 'small' ? reps * 100 : reps
  for (let i = 0; i < n / 4; i++) countPrompt(body) // warm up
  const runs = []
  for (let round = 0; round < 5; round++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < n; i++) countPrompt(body)
    runs.push(Number(process.hrtime.bigint() - t0) / n / 1e3)
  }
  const us = runs.sort((a, b) => a - b)[runs.length >> 1]
  const c = countPrompt(body)
  console.log(`${kind.padEnd(8)} ${String(body.length).padStart(8)} bytes  ${us.toFixed(1).padStart(8)} us  (${(body.length / us).toFixed(0)} MB/s)  ` +
    `text ${c.textTokens} tokens, ${c.images} image(s), bytes/4 ${Math.ceil(body.length / 4)}`)
}
