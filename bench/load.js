// Closed-loop load generator: `concurrency` workers, each sends its next request as soon as the
// previous response has been read to the last byte. A warm-up is run first and not counted; in
// the measured window every completed request gives a full-response latency and a time to first
// body byte. Loopback only: the caller passes the URL of a local target.
//
//   node bench/load.js http://127.0.0.1:PORT/api/v1/chat/completions --concurrency=64 --seconds=5 [--stream] [--pace=100]
import { Pool } from 'undici'
import { summarize } from './stats.js'

const DONE = Buffer.from('[DONE]')

// Open WebUI's shape: the whole conversation on every turn. 'chat500k': 200 turns, ~500 KB;
// 'image4m': one user message with a ~4 MB base64 data URL image part.
export function requestBody (stream, kind = 'small') {
  if (kind === 'chat500k') {
    const messages = [{ role: 'system', content: 'You are a helpful assistant.' }]
    for (let i = 0; i < 200; i++) {
      messages.push({ role: i % 2 ? 'assistant' : 'user', content: `Turn ${i}: ` + 'Lorem ipsum "quoted" dolor sit amet, consectetur \\ adipiscing elit; caf\u00e9 naïve 東京 '.repeat(26) })
    }
    return JSON.stringify({ model: 'openai/gpt-4o-mini', stream, messages, params: {}, features: { web_search: false }, stream_options: stream ? { include_usage: true } : undefined })
  }
  if (kind === 'image4m') {
    const data = Buffer.alloc(3 * 1024 * 1024, 'bench-image-bytes').toString('base64')
    return JSON.stringify({ model: 'openai/gpt-4o-mini', stream, messages: [
      { role: 'system', content: 'You are a helpful assistant.' },
      { role: 'user', content: [{ type: 'text', text: 'What is in this image?' }, { type: 'image_url', image_url: { url: `data:image/png;base64,${data}` } }] },
    ] })
  }
  return JSON.stringify({
    model: 'openai/gpt-4o-mini',
    stream,
    messages: [
      { role: 'system', content: 'You are a helpful assistant. Answer briefly and precisely.' },
      { role: 'user', content: 'What is the capital of France? Please answer in one sentence, and mention one famous landmark there.' },
    ],
    temperature: 0.7,
    max_tokens: 256,
  })
}

/**
 * Runs the load; resolves with { requests, errors, seconds, rps, latencies, ttfbs, errorKinds, okTotal }.
 * onMeasureStart / onMeasureEnd are awaited at the edges of the measured window.
 */
export async function runLoad ({
  url, concurrency, seconds, warmupSeconds = 1, headers = {}, stream = false, body = 'small',
  onMeasureStart, onMeasureEnd, drainTimeoutMs = 30_000,
}) {
  const u = new URL(url)
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname)) throw new Error(`load.js only targets loopback, not ${u.hostname}`)
  const pool = new Pool(u.origin, { connections: concurrency, pipelining: 1, keepAliveTimeout: 120_000, headersTimeout: 120_000, bodyTimeout: 120_000 })
  const opts = {
    method: 'POST',
    path: u.pathname + u.search,
    headers: { 'content-type': 'application/json', ...headers },
    body: Buffer.from(requestBody(stream, body)),
  }
  let phase = 'warmup'
  let t0 = 0
  const latencies = []
  const ttfbs = []
  const errorKinds = {}
  let errors = 0
  let okTotal = 0 // every good response, warm-up and drain included: what a ledger must have recorded

  const one = () => new Promise((resolve) => {
    const start = performance.now()
    let first = -1
    let status = 0
    let last = null
    let prev = null
    pool.dispatch(opts, {
      onConnect () {},
      onHeaders (code) { if (code >= 200) status = code; return true },
      onData (chunk) {
        if (first < 0) first = performance.now()
        prev = last
        last = chunk
        return true
      },
      onComplete () {
        const end = performance.now()
        let error = status !== 200 ? `status ${status}` : null
        if (!error && stream) {
          const tail = prev ? Buffer.concat([prev, last]) : last
          if (!tail || tail.indexOf(DONE) === -1) error = 'stream without [DONE]'
        }
        resolve({ start, end, ttfb: (first < 0 ? end : first) - start, error })
      },
      onError (err) { resolve({ start, end: performance.now(), ttfb: NaN, error: err.code ?? err.message }) },
    })
  })

  const worker = async () => {
    while (phase !== 'stop') {
      const r = await one()
      if (!r.error) okTotal++
      if (phase === 'measure' && r.start >= t0) {
        if (r.error) { errors++; errorKinds[r.error] = (errorKinds[r.error] ?? 0) + 1 } else {
          latencies.push(r.end - r.start)
          ttfbs.push(r.ttfb)
        }
      }
      if (r.error) await new Promise((resolve) => setTimeout(resolve, 10)) // no hot loop on a dead target
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
  // Bounded: whatever is still in flight after the drain timeout is cut off.
  const drained = await Promise.race([
    Promise.all(workers).then(() => true),
    new Promise((resolve) => setTimeout(() => resolve(false), drainTimeoutMs)),
  ])
  await (drained ? pool.close() : pool.destroy())
  const requests = latencies.length
  return { requests, errors, seconds: elapsed, rps: requests / elapsed, latencies, ttfbs, errorKinds, okTotal }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
  const url = process.argv[2]
  if (!url || url.startsWith('--')) { process.stderr.write('usage: node bench/load.js URL [--concurrency=N] [--seconds=S] [--stream] [--pace=MS]\n'); process.exit(2) }
  const pace = Number(arg('pace', '0'))
  const r = await runLoad({
    url,
    concurrency: Number(arg('concurrency', '1')),
    seconds: Number(arg('seconds', '5')),
    warmupSeconds: Number(arg('warmup', '1')),
    stream: process.argv.includes('--stream'),
    headers: pace > 0 ? { 'x-bench-pace-ms': String(pace) } : {},
  })
  const { latencies, ttfbs, ...rest } = r
  process.stdout.write(JSON.stringify({ ...rest, latencyMs: summarize(latencies), ttfbMs: summarize(ttfbs) }, null, 2) + '\n')
}
