// A second load generator, built unlike bench/load.js: undici's Pool.request with the body as a
// string (undici encodes it on every request, as an SDK sending JSON.stringify's output does), the
// response read with body.text(). Closed loop, `concurrency` workers, warm-up not counted.
// Its body shapes are its own too: plain ASCII turns, and an image of random bytes.
import { randomBytes } from 'node:crypto'
import { Pool } from 'undici'

/** 'chat500k': 200 turns of ASCII text, ~500 KB; 'image4m': a 3 MB random buffer as a base64 data URL (~4 MB). */
export function stringBody (kind, stream = false) {
  if (kind === 'chat500k') {
    const messages = [{ role: 'system', content: 'You are a helpful assistant.' }]
    const text = 'The quick brown fox jumps over the lazy dog, and then it considers the weather. '.repeat(31)
    for (let i = 0; i < 200; i++) messages.push({ role: i % 2 ? 'assistant' : 'user', content: `Turn ${i}: ${text}` })
    return JSON.stringify({ model: 'openai/gpt-4o-mini', messages, stream })
  }
  if (kind === 'image4m') {
    const url = `data:image/png;base64,${randomBytes(3 * 1024 * 1024).toString('base64')}`
    return JSON.stringify({ model: 'openai/gpt-4o-mini', stream, messages: [{ role: 'user', content: [{ type: 'text', text: 'What is in this image?' }, { type: 'image_url', image_url: { url } }] }] })
  }
  return JSON.stringify({ model: 'openai/gpt-4o-mini', stream, messages: [{ role: 'user', content: 'What is the capital of France?' }] })
}

/**
 * Runs the load; resolves with { requests, errors, seconds, latencies }. onMeasureStart /
 * onMeasureEnd are awaited at the edges of the measured window (warm-up before it).
 */
export async function runStringLoad ({ url, concurrency, seconds, warmupSeconds = 1, headers = {}, body, onMeasureStart, onMeasureEnd }) {
  const u = new URL(url)
  if (!['127.0.0.1', 'localhost'].includes(u.hostname)) throw new Error(`string-load.js only targets loopback, not ${u.hostname}`)
  const pool = new Pool(u.origin, { connections: concurrency, keepAliveTimeout: 120_000, headersTimeout: 120_000, bodyTimeout: 120_000 })
  let phase = 'warmup'
  let t0 = 0
  const latencies = []
  let errors = 0
  const errorKinds = {}
  const worker = async () => {
    while (phase !== 'stop') {
      const start = performance.now()
      let error = null
      try {
        const res = await pool.request({ method: 'POST', path: u.pathname, headers: { 'content-type': 'application/json', ...headers }, body })
        const text = await res.body.text()
        if (res.statusCode !== 200) error = `status ${res.statusCode}: ${text.slice(0, 80)}`
      } catch (err) { error = err.code ?? err.message }
      const end = performance.now()
      if (phase === 'measure' && start >= t0) {
        if (error) { errors++; errorKinds[error] = (errorKinds[error] ?? 0) + 1 } else latencies.push(end - start)
      }
      if (error) await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }
  const workers = Array.from({ length: concurrency }, worker)
  await new Promise((resolve) => setTimeout(resolve, warmupSeconds * 1000))
  phase = 'measure'
  t0 = performance.now()
  await onMeasureStart?.()
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000))
  phase = 'stop'
  const elapsed = (performance.now() - t0) / 1000
  await onMeasureEnd?.()
  await Promise.all(workers)
  await pool.close()
  return { requests: latencies.length, errors, errorKinds, seconds: elapsed, latencies }
}
