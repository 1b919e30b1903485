// A fast fake OpenRouter for the benchmarks: answers POST .../chat/completions as OpenRouter does
// (non-stream JSON with a usage object carrying "cost", or an SSE stream), plus GET .../generation.
//
//   node bench/upstream.js --port=0      prints {"port":N} on stdout once listening (127.0.0.1 only)
//
// Per request, two optional headers shape a stream (they travel through every proxy untouched):
//   x-bench-pace-ms   pause between events (0 = next event on setImmediate, the default)
//   x-bench-events    number of events in the stream, [DONE] included (default 20)
//   x-bench-write     'whole': the whole stream in one write (the 'whole' upstream mode)
import { createServer } from 'node:http'
import { randomBytes } from 'node:crypto'

const MODEL = 'openai/gpt-4o-mini'
const PREFIX = randomBytes(4).toString('hex') // generation ids stay unique across restarts
let counter = 0
const nextId = () => `gen-${PREFIX}-${(++counter).toString(36)}`

const usage = (completion) => ({
  prompt_tokens: 42,
  completion_tokens: completion,
  total_tokens: 42 + completion,
  cost: Number((0.0000123 + completion * 0.0000006).toFixed(10)),
  is_byok: false,
  prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
  cost_details: { upstream_inference_cost: null, upstream_inference_prompt_cost: 0.0000063, upstream_inference_completions_cost: 0.000006 },
  completion_tokens_details: { reasoning_tokens: 0, image_tokens: 0 },
})

export function completion (id) {
  return JSON.stringify({
    id,
    provider: 'OpenAI',
    model: MODEL,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    choices: [{
      logprobs: null,
      finish_reason: 'stop',
      native_finish_reason: 'stop',
      index: 0,
      message: { role: 'assistant', content: 'Hello! This is a benchmark answer of a realistic, modest length. How can I help you today?', refusal: null, reasoning: null },
    }],
    system_fingerprint: 'fp_bench',
    usage: usage(24),
  })
}

function chunk (id, created, delta, finish) {
  return 'data: ' + JSON.stringify({
    id,
    provider: 'OpenAI',
    model: MODEL,
    object: 'chat.completion.chunk',
    created,
    choices: [{ index: 0, delta, finish_reason: finish, native_finish_reason: finish, logprobs: null }],
    system_fingerprint: 'fp_bench',
  }) + '\n\n'
}

/** The events of one stream (at least 5): comment, role chunk, content chunks, finish chunk, usage chunk, [DONE]. */
function streamEvents (id, count) {
  const created = Math.floor(Date.now() / 1000)
  const contentChunks = Math.max(0, count - 5)
  const events = [': OPENROUTER PROCESSING\n\n', chunk(id, created, { role: 'assistant', content: '' }, null)]
  for (let i = 0; i < contentChunks; i++) events.push(chunk(id, created, { role: 'assistant', content: ` token${i}` }, null))
  events.push(chunk(id, created, { role: 'assistant', content: '' }, 'stop'))
  // The last chunk: no choices, the usage of the whole generation.
  events.push('data: ' + JSON.stringify({
    id, provider: 'OpenAI', model: MODEL, object: 'chat.completion.chunk', created, choices: [], usage: usage(contentChunks),
  }) + '\n\n')
  events.push('data: [DONE]\n\n')
  return events
}

export function sendStream (res, id, count, paceMs, whole = false) {
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    'x-generation-id': id,
  })
  const events = streamEvents(id, count)
  if (whole) { res.end(events.join('')); return }
  let i = 0
  const next = () => {
    if (res.destroyed) return
    res.write(events[i++])
    if (i === events.length) { res.end(); return }
    if (paceMs > 0) setTimeout(next, paceMs)
    else setImmediate(next)
  }
  next()
}

function handle (req, res) {
  const url = req.url ?? '/'
  if (req.method === 'GET' && url.startsWith('/api/v1/generation')) {
    const id = new URL(url, 'http://x').searchParams.get('id') ?? 'gen-unknown'
    const body = JSON.stringify({ data: { id, model: MODEL, provider_name: 'OpenAI', total_cost: 0.0000267, tokens_prompt: 42, tokens_completion: 24, native_tokens_prompt: 42, native_tokens_completion: 24, is_byok: false, finish_reason: 'stop' } })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
    return
  }
  if (req.method !== 'POST' || !url.includes('/chat/completions')) {
    res.writeHead(404, { 'content-type': 'application/json' })
    res.end('{"error":{"message":"not found","code":404}}')
    return
  }
  const parts = []
  req.on('data', (c) => parts.push(c))
  req.on('end', () => {
    let stream = false
    // Large bodies (chat histories, images) are read at their head only: the upstream's own cost
    // must not dominate what is measured of the proxies in front of it.
    const raw = Buffer.concat(parts)
    try { stream = raw.length > 65536 ? /"stream"\s*:\s*true/.test(raw.toString('latin1', 0, 4096)) : JSON.parse(raw.toString('utf8')).stream === true } catch {
      res.writeHead(400, { 'content-type': 'application/json' })
      res.end('{"error":{"message":"invalid json","code":400}}')
      return
    }
    const id = nextId()
    if (stream) {
      sendStream(res, id, Number(req.headers['x-bench-events'] ?? 20), Number(req.headers['x-bench-pace-ms'] ?? 0), req.headers['x-bench-write'] === 'whole')
      return
    }
    const body = completion(id)
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-generation-id': id })
    res.end(body)
  })
}

export function startUpstream (port = 0, host = '127.0.0.1') {
  const server = createServer({ keepAliveTimeout: 120_000 }, handle)
  server.maxRequestsPerSocket = 0
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => resolve(server))
  })
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const port = Number((process.argv.find((a) => a.startsWith('--port=')) ?? '--port=0').slice(7))
  const server = await startUpstream(port)
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
  process.on('SIGTERM', () => { server.closeAllConnections(); server.close(() => process.exit(0)) })
}
