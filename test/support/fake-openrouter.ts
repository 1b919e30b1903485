import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { gzipSync } from 'node:zlib'

// A fake OpenRouter that behaves like the real one where the sidecar depends on it
// (shared/context/openrouter.md): ": OPENROUTER PROCESSING" comments before and between events,
// CRLF on request, events cut into reads at arbitrary bytes (through multi-byte characters),
// usage only in the last chunk with "choices": [], errors mid-stream with finish_reason "error",
// X-Generation-Id headers, error bodies whose status equals error.code, and /generation
// answering 404 for a while after the request ends.
//
// The scenario is picked by the requested model:
//   fake/ok (default)  usage inline           fake/error-402   402 before streaming
//   fake/error-mid     error event, no usage  fake/no-usage    stream ends without usage
//   fake/slow          paced events (aborts)  fake/garbage     200 with a non-JSON body
//   fake/hang          headers, then silence  fake/crlf        CRLF line ends
//   fake/silent        no answer at all
//   fake/negative-cost, fake/huge-cost (401 digits), fake/huge-tokens (3e9 prompt tokens): bad numbers
//   fake/escaped-cost  the usage key written "co\u0073t": valid JSON whose digits cannot be read back
//   fake/sized         a non-stream answer with a Content-Length header (not chunked)
//   fake/sized-embed   a large one (about 1.2 MB): it reaches the sidecar in many reads
//   fake/cut-stream    a stream whose connection dies after its first events (partial usage)
//   fake/endless-anon  a stream that never names its generation and never ends
// /messages streams in Anthropic's shape: message_start (input tokens, no cost) ... message_delta.
//   fake/gzip          gzip-compressed answer (JSON, or SSE when streamed) whatever accept-encoding
//                      asked for, as an upstream or a proxy before it may do
//
// holdAt pauses answers (chat completions, streamed or not) once their generation exists, that
// is once OpenRouter would bill them: 'headers' before any byte, 'body' after the headers (the
// generation named). release() lets every held answer go on; `held` counts those waiting.

export interface FakeGeneration {
  id: string
  model: string
  provider: string
  endpoint: string
  streamed: boolean
  promptTokens: number
  completionTokens: number
  cachedTokens: number
  reasoningTokens: number
  /** prompt_tokens_details.cache_write_tokens and .audio_tokens */
  cacheWriteTokens: number
  audioTokens: number
  /** Exact decimal text of what was charged, as it appears in the JSON. */
  cost: string
  user: string | null
  cancelled: boolean
  finishReason: string | null
  completedAt: number | null
}

export interface RecordedRequest { method: string, path: string, headers: IncomingMessage['headers'], body: string }

const CONTENT = ['Grüße', ' aus', ' 日本', ' 🌍', ' — ok', '. "usage": {"cost": 99}', ' fin']

export class FakeOpenRouter {
  server: Server
  port = 0
  readonly requests: RecordedRequest[] = []
  readonly generations = new Map<string, FakeGeneration>()
  /** Every byte sent in each generation's response body, for byte-for-byte checks. */
  readonly sent = new Map<string, Buffer>()
  /** Raw request bodies of multipart uploads, by generation. */
  readonly uploads = new Map<string, string>()
  /** The same, as bytes (files need not be UTF-8). */
  readonly uploadBytes = new Map<string, Buffer>()
  /** /generation answers 404 until this long after a generation completed. */
  generationDelayMs = 300
  generationLookups = 0
  slowEventMs = 40
  /** When set, what every generation completed in full costs (budget tests need costs near the estimate). */
  fixedCost: string | null = null
  /** When set, what generation number n (from 1) costs; wins over fixedCost (overruns: above the listed price). */
  costFor: ((n: number) => string | null) | null = null
  /** When set, what a completed generation costs, from the parsed request body (overrides fixedCost). */
  costOf: ((request: Record<string, any>) => string) | null = null
  /**
   * GET /models as OpenRouter lists it: prices as decimal strings in USD per token (`image` per
   * input image; "0" for a text-only model), the context window, and top_provider's limits.
   */
  models: Array<Record<string, unknown>> = [
    {
      id: 'fake/ok', name: 'Fake OK', context_length: 128000,
      architecture: { modality: 'text->text', input_modalities: ['text'], output_modalities: ['text'], tokenizer: 'Other' },
      pricing: { prompt: '0.000001', completion: '0.000002', request: '0', image: '0', web_search: '0', internal_reasoning: '0' },
      top_provider: { context_length: 128000, max_completion_tokens: 16384, is_moderated: false },
    },
    {
      id: 'fake/slow', name: 'Fake Slow', context_length: 128000,
      architecture: { modality: 'text->text', input_modalities: ['text'], output_modalities: ['text'], tokenizer: 'Other' },
      pricing: { prompt: '0.000001', completion: '0.000002', request: '0', image: '0', web_search: '0', internal_reasoning: '0' },
      top_provider: { context_length: 128000, max_completion_tokens: 16384, is_moderated: false },
    },
    {
      id: 'fake/vision', name: 'Fake Vision', context_length: 200000,
      architecture: { modality: 'text+image+file->text', input_modalities: ['text', 'image', 'file'], output_modalities: ['text'], tokenizer: 'Claude' },
      pricing: {
        prompt: '0.000003', completion: '0.000015', request: '0', image: '0.0048', web_search: '0', internal_reasoning: '0',
        input_cache_read: '0.0000003', input_cache_write: '0.00000375',
      },
      top_provider: { context_length: 200000, max_completion_tokens: 8192, is_moderated: false },
    },
  ]
  /** Where answers wait until release(); null: they do not. */
  holdAt: 'headers' | 'body' | null = null
  private gates: Array<() => void> = []
  private seq = 0
  private rng: () => number

  constructor (seed = 42) {
    this.rng = mulberry32(seed)
    this.server = createServer((req, res) => {
      this.answering++
      void this.handle(req, res).finally(() => { this.answering-- })
    })
  }

  /** Requests still being answered (or billed: a client that went away does not stop the work). */
  answering = 0

  get baseUrl (): string { return `http://127.0.0.1:${this.port}/api/v1` }

  async start (): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r))
    this.port = (this.server.address() as AddressInfo).port
    return this
  }

  async close (): Promise<void> {
    this.server.closeAllConnections()
    await new Promise<void>((r) => this.server.close(() => r()))
  }

  /** Answers waiting in holdAt. */
  get held (): number { return this.gates.length }

  /** Stops holding and lets every held answer go on (to a client that may be gone). */
  release (): void {
    this.holdAt = null
    for (const go of this.gates.splice(0)) go()
  }

  private async gate (at: 'headers' | 'body', res: ServerResponse): Promise<void> {
    if (this.holdAt !== at) return
    if (at === 'body') res.flushHeaders()
    await new Promise<void>((resolve) => this.gates.push(resolve))
  }

  /** Sum of what was charged, in exact decimal (as integer nano-nano-dollars), for cross-checks. */
  chargedTotal (): string { return sumDecimals([...this.generations.values()].map((g) => g.cost)) }

  /**
   * Bodies larger than this are not parsed: model, stream and user are picked out by pattern, so
   * a test's huge body (nested millions deep) costs the fake nothing in the test's own process.
   */
  shallowOver = Infinity

  /** What GET /key answers: OpenRouter's shape for the calling key (tests may change it). */
  key: Record<string, unknown> = {
    label: 'sk-or-v1-tes...789', limit: 100, limit_reset: null, limit_remaining: 87.5, include_byok_in_limit: false,
    usage: 12.5, usage_daily: 0.5, usage_weekly: 3.25, usage_monthly: 12.5,
    byok_usage: 0, byok_usage_daily: 0, byok_usage_weekly: 0, byok_usage_monthly: 0, is_free_tier: false,
  }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const bytes = Buffer.concat(chunks)
    const body = bytes.toString('utf8')
    const url = new URL(req.url ?? '/', 'http://x')
    this.requests.push({ method: req.method ?? '', path: url.pathname + url.search, headers: req.headers, body })
    if (req.headers.authorization !== 'Bearer sk-or-v1-test-key-0123456789') {
      return json(res, 401, { error: { code: 401, message: 'No auth credentials found' } })
    }
    const path = url.pathname.replace(/^\/api\/v1/, '')
    if (req.method === 'GET' && (path === '/models' || path === '/models/user' || path === '/embeddings/models')) return json(res, 200, { data: this.models })
    if (req.method === 'GET' && path === '/key') return json(res, 200, { data: this.key })
    if (req.method === 'GET' && path === '/generation') return this.generation(res, url.searchParams.get('id') ?? '')
    if (req.method !== 'POST') return json(res, 404, { error: { code: 404, message: 'Not Found' } })
    const endpoint = path.slice(1)
    if (['audio/transcriptions', 'audio/translations', 'images/edits', 'images/variations'].includes(endpoint)) {
      // Multipart in, JSON with usage out: the body must arrive exactly as the client sent it.
      const g = this.newGeneration(endpoint, 'fake/whisper', false, /name="user"\r\n\r\n([^\r]*)\r\n/.exec(body)?.[1] ?? null)
      this.uploads.set(g.id, body)
      this.uploadBytes.set(g.id, bytes)
      res.writeHead(200, { 'content-type': 'application/json', 'x-generation-id': g.id })
      return this.finish(g, res, Buffer.from(`{"id":"${g.id}","text":"hello","usage":{"prompt_tokens":${g.promptTokens},"total_tokens":${g.promptTokens},"cost":${g.cost}}}`))
    }
    let parsed: Record<string, any>
    if (bytes.length > this.shallowOver) {
      const field = (name: string) => new RegExp(`"${name}":("[^"]*"|true|false)`).exec(body)?.[1]
      const str = (v: string | undefined) => (v?.startsWith('"') ? v.slice(1, -1) : undefined)
      parsed = { model: str(field('model')), stream: field('stream') === 'true', user: str(field('user')) }
    } else {
      try { parsed = JSON.parse(body) } catch { return json(res, 400, { error: { code: 400, message: 'Invalid JSON' } }) }
    }
    const model = String(parsed.model ?? 'fake/ok')
    if (model === 'fake/silent') return // never answers: the sidecar's headers timeout must end this
    if (model === 'fake/error-402') {
      return json(res, 402, { error: { code: 402, message: 'Insufficient credits. Add more using https://openrouter.ai/credits', metadata: {} } })
    }
    const g = this.newGeneration(endpoint, model, parsed.stream === true, typeof parsed.user === 'string' ? parsed.user : null)
    if (this.costOf) g.cost = this.costOf(parsed)
    if (model === 'fake/endless-anon') {
      // Never names the generation (no header, no id in any event) and never ends by itself.
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      const timer = setInterval(() => res.write(': OPENROUTER PROCESSING\n\n'), 50)
      res.on('close', () => { clearInterval(timer); g.cancelled = true; g.completedAt = Date.now() })
      return
    }
    if (model === 'fake/cut-json') {
      // Declares a length, sends part of it, then the connection dies.
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '5000', 'x-generation-id': g.id })
      res.write('{"id":"' + g.id + '","choices":[')
      g.completedAt = Date.now()
      setTimeout(() => res.socket?.destroy(), 30)
      return
    }
    if (model === 'fake/big-embed' || model === 'fake/huge-embed' || model === 'fake/sized-embed') {
      g.completionTokens = 0
      g.reasoningTokens = 0
      g.cachedTokens = 0
      const vectors = Array.from({ length: model === 'fake/huge-embed' ? 4000 : 700 }, (_, i) => `{"object":"embedding","index":${i},"embedding":[${Array.from({ length: 256 }, (_, j) => ((i * 31 + j) % 997) / 1000).join(',')}]}`)
      const bodyText = `{"id":"${g.id}","object":"list","model":"${g.model}","provider":"${g.provider}","data":[${vectors.join(',')}],"usage":{"prompt_tokens":${g.promptTokens},"total_tokens":${g.promptTokens},"cost":${g.cost}}}`
      const sized = model === 'fake/sized-embed' ? { 'content-length': String(Buffer.byteLength(bodyText)) } : {}
      res.writeHead(200, { 'content-type': 'application/json', ...sized })
      return this.finish(g, res, Buffer.from(bodyText))
    }
    if (endpoint === 'chat/completions') await this.gate('headers', res)
    if (model === 'fake/slow-start') await sleep(400) // headers late, as when a provider queues
    if (model === 'fake/slow-complete') await sleep(400) // a non-stream answer takes time
    if (model === 'fake/garbage') {
      res.writeHead(200, { 'content-type': 'application/json', 'x-generation-id': g.id })
      return this.finish(g, res, Buffer.from('<html>upstream proxy hiccup</html>'))
    }
    if (model === 'fake/gzip') return this.gzipped(g, endpoint, res)
    if (endpoint === 'embeddings') return this.embeddings(g, res)
    if (g.streamed) return this.stream(g, endpoint, model, req, res)
    return this.complete(g, endpoint, res)
  }

  private newGeneration (endpoint: string, model: string, streamed: boolean, user: string | null): FakeGeneration {
    const n = ++this.seq
    // Costs with more significant digits than a double holds: a float anywhere on the way fails.
    const cost = this.costFor?.(n) ?? this.fixedCost ?? `0.000${String(n).padStart(3, '0')}${Math.floor(this.rng() * 1e9).toString().padStart(9, '0')}987654321`
    const g: FakeGeneration = {
      id: `gen-${Date.now()}-${n}`, model: model === 'fake/ok' ? 'fake/ok-2025' : model, provider: 'FakeProvider', endpoint, streamed,
      promptTokens: 11 + n, completionTokens: CONTENT.length, cachedTokens: n % 3, reasoningTokens: n % 2, cacheWriteTokens: n % 4, audioTokens: n % 5, cost, user,
      cancelled: false, finishReason: 'stop', completedAt: null,
    }
    if (model === 'fake/negative-cost') g.cost = '-0.0042'
    if (model === 'fake/huge-cost') g.cost = '1' + '0'.repeat(400)
    if (model === 'fake/huge-tokens') g.promptTokens = 3_000_000_000
    this.generations.set(g.id, g)
    return g
  }

  private usage (g: FakeGeneration, endpoint: string): string {
    if (endpoint === 'responses') {
      return `{"input_tokens":${g.promptTokens},"input_tokens_details":{"cached_tokens":${g.cachedTokens}},"output_tokens":${g.completionTokens},"output_tokens_details":{"reasoning_tokens":${g.reasoningTokens}},"total_tokens":${g.promptTokens + g.completionTokens},"cost":${g.cost}}`
    }
    if (endpoint === 'messages') {
      return `{"input_tokens":${g.promptTokens},"cache_creation_input_tokens":${g.cacheWriteTokens},"cache_read_input_tokens":${g.cachedTokens},"output_tokens":${g.completionTokens},"cost":${g.cost}}`
    }
    return `{"prompt_tokens":${g.promptTokens},"completion_tokens":${g.completionTokens},"total_tokens":${g.promptTokens + g.completionTokens},` +
      `"prompt_tokens_details":{"cached_tokens":${g.cachedTokens},"cache_write_tokens":${g.cacheWriteTokens},"audio_tokens":${g.audioTokens}},` +
      `"completion_tokens_details":{"reasoning_tokens":${g.reasoningTokens},"image_tokens":0},` +
      `"cost":${g.cost},"is_byok":false,"cost_details":{"upstream_inference_cost":${g.cost},"upstream_inference_prompt_cost":0.0008,"upstream_inference_completions_cost":0.0004}}`
  }

  private complete (g: FakeGeneration, endpoint: string, res: ServerResponse): void {
    const text = JSON.stringify(CONTENT.join(''))
    const usage = g.model === 'fake/escaped-cost' ? this.usage(g, endpoint).replace('"cost":', '"co\\u0073t":') : this.usage(g, endpoint)
    let body: string
    if (endpoint === 'responses') {
      body = `{"id":"${g.id}","object":"response","model":"${g.model}","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":${text}}]}],"usage":${this.usage(g, endpoint)}}`
    } else if (endpoint === 'messages') {
      body = `{"id":"${g.id}","type":"message","role":"assistant","model":"${g.model}","content":[{"type":"text","text":${text}}],"stop_reason":"end_turn","usage":${this.usage(g, endpoint)}}`
    } else {
      body = `{"id":"${g.id}","provider":"${g.provider}","model":"${g.model}","object":"chat.completion","created":1764300000,` +
        `"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":${text}}}],"usage":${usage}}`
    }
    const sized = g.model === 'fake/sized' ? { 'content-length': String(Buffer.byteLength(body)) } : {}
    res.writeHead(200, { 'content-type': 'application/json', 'x-generation-id': g.id, ...sized })
    if (this.holdAt === 'body' && endpoint === 'chat/completions') { void this.gate('body', res).then(() => this.finish(g, res, Buffer.from(body))); return }
    this.finish(g, res, Buffer.from(body))
  }

  private gzipped (g: FakeGeneration, endpoint: string, res: ServerResponse): void {
    const text = JSON.stringify(CONTENT.join(''))
    const plain = g.streamed
      ? [`: OPENROUTER PROCESSING\n\n`,
          `data: {"id":"${g.id}","provider":"${g.provider}","model":"${g.model}","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":${text}},"finish_reason":"stop"}]}\n\n`,
          `data: {"id":"${g.id}","provider":"${g.provider}","model":"${g.model}","object":"chat.completion.chunk","choices":[],"usage":${this.usage(g, endpoint)}}\n\n`,
          'data: [DONE]\n\n'].join('')
      : `{"id":"${g.id}","provider":"${g.provider}","model":"${g.model}","object":"chat.completion","created":1764300000,` +
        `"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":${text}}}],"usage":${this.usage(g, endpoint)}}`
    res.writeHead(200, { 'content-type': g.streamed ? 'text/event-stream' : 'application/json', 'content-encoding': 'gzip', 'x-generation-id': g.id })
    this.finish(g, res, gzipSync(plain))
  }

  private embeddings (g: FakeGeneration, res: ServerResponse): void {
    g.completionTokens = 0
    g.reasoningTokens = 0
    g.cachedTokens = 0
    const body = `{"id":"${g.id}","object":"list","model":"${g.model}","data":[{"object":"embedding","index":0,"embedding":[0.0123,-0.5,1e-7]}],` +
      `"usage":{"prompt_tokens":${g.promptTokens},"total_tokens":${g.promptTokens},"cost":${g.cost}}}`
    res.writeHead(200, { 'content-type': 'application/json' })
    this.finish(g, res, Buffer.from(body))
  }

  private async stream (g: FakeGeneration, endpoint: string, model: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const nl = model === 'fake/crlf' ? '\r\n' : '\n'
    const events: string[] = [`: OPENROUTER PROCESSING${nl}${nl}`]
    const ev = (data: string, type?: string) => (type ? `event: ${type}${nl}` : '') + `data: ${data}${nl}${nl}`
    const chunk = (delta: string, finish: string | null) =>
      `{"id":"${g.id}","provider":"${g.provider}","model":"${g.model}","object":"chat.completion.chunk","created":1764300000,` +
      `"choices":[{"index":0,"delta":${delta},"finish_reason":${finish === null ? 'null' : `"${finish}"`},"native_finish_reason":null}]}`
    const slow = model === 'fake/slow' || model === 'fake/slow-start' || model === 'fake/slow-unnamed'
    if (endpoint === 'messages') {
      // Anthropic's shape: message_start carries the input tokens and no cost; the cost comes last.
      const n = slow ? 200 : CONTENT.length
      if (slow) g.completionTokens = n
      events.push(ev(`{"type":"message_start","message":{"id":"${g.id}","type":"message","role":"assistant","model":"${g.model}","content":[],"stop_reason":null,"usage":{"input_tokens":${g.promptTokens},"output_tokens":1}}}`, 'message_start'))
      events.push(ev('{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}', 'content_block_start'))
      for (let i = 0; i < n; i++) events.push(ev(`{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":${JSON.stringify(CONTENT[i % CONTENT.length])}}}`, 'content_block_delta'))
      events.push(ev('{"type":"content_block_stop","index":0}', 'content_block_stop'))
      events.push(ev(`{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":${g.completionTokens},"cost":${g.cost}}}`, 'message_delta'))
      events.push(ev('{"type":"message_stop"}', 'message_stop'))
    } else if (endpoint === 'responses') {
      events.push(ev(`{"type":"response.created","response":{"id":"${g.id}","model":"${g.model}","status":"in_progress","usage":null}}`, 'response.created'))
      for (const c of CONTENT) events.push(ev(`{"type":"response.output_text.delta","delta":${JSON.stringify(c)}}`, 'response.output_text.delta'))
      events.push(ev(`{"type":"response.completed","response":{"id":"${g.id}","model":"${g.model}","status":"completed","usage":${this.usage(g, endpoint)}}}`, 'response.completed'))
    } else {
      events.push(ev(chunk('{"role":"assistant","content":""}', null)))
      const n = slow ? 200 : CONTENT.length
      if (slow) g.completionTokens = n
      for (let i = 0; i < n; i++) {
        const last = i === n - 1 && model !== 'fake/error-mid'
        events.push(ev(chunk(`{"content":${JSON.stringify(CONTENT[i % CONTENT.length])}}`, last ? 'stop' : null)))
        if (i % 3 === 1) events.push(`: OPENROUTER PROCESSING${nl}${nl}`)
        if (model === 'fake/error-mid' && i === 2) {
          g.completionTokens = 3
          g.cost = '0'
          g.finishReason = 'error'
          events.push(ev(`{"id":"${g.id}","object":"chat.completion.chunk","created":1764300000,"model":"${g.model}","provider":"${g.provider}",` +
            `"error":{"code":502,"message":"Provider disconnected unexpectedly","metadata":{"provider_name":"FakeProvider"}},` +
            `"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}`))
          break
        }
      }
      if (model !== 'fake/error-mid' && model !== 'fake/no-usage') {
        events.push(ev(`{"id":"${g.id}","provider":"${g.provider}","model":"${g.model}","object":"chat.completion.chunk","created":1764300000,"choices":[],"usage":${this.usage(g, endpoint)}}`))
      }
      events.push(ev('[DONE]'))
    }
    const named = model === 'fake/slow-unnamed' ? {} : { 'x-generation-id': g.id }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', ...named })
    if (endpoint === 'chat/completions') await this.gate('body', res)
    if (model === 'fake/cut-stream') {
      // The first events (with partial usage), then the connection dies.
      res.write(events.slice(0, 4).join(''))
      g.completedAt = Date.now()
      setTimeout(() => res.socket?.destroy(), 30)
      return
    }
    if (model === 'fake/hang') {
      res.write(events[0])
      res.flushHeaders()
      return // never another byte: the sidecar's body timeout must end this
    }
    const bytes = Buffer.from(events.join(''))
    const sentParts: Buffer[] = []
    let aborted = false
    res.on('close', () => { if (!res.writableFinished) aborted = true })
    if (model === 'fake/slow' || model === 'fake/slow-start' || model === 'fake/slow-unnamed') {
      let sentEvents = 0
      for (const e of events) {
        if (aborted) break
        if (model === 'fake/slow-unnamed' && sentEvents === 0 && e.includes('data: {')) await sleep(300) // the id comes late
        const b = Buffer.from(e)
        sentParts.push(b)
        res.write(b)
        if (e.includes('data: {')) sentEvents++
        await sleep(this.slowEventMs)
      }
      if (aborted) {
        // Billed as far as it got (a provider that supports cancellation stops here).
        g.cancelled = true
        g.completionTokens = Math.max(0, sentEvents - 1)
        g.finishReason = null
        g.cost = `0.0000${String(g.completionTokens).padStart(4, '0')}11111111111111`
      }
      this.sent.set(g.id, Buffer.concat(sentParts))
      g.completedAt = Date.now()
      if (!aborted) res.end()
      return
    }
    // Cut the stream at random byte offsets, through UTF-8 sequences and CRLF pairs alike.
    let at = 0
    while (at < bytes.length) {
      const size = 1 + Math.floor(this.rng() * 23)
      const part = bytes.subarray(at, at + size)
      res.write(part)
      sentParts.push(part)
      at += size
      if (this.rng() < 0.2) await sleep(1)
    }
    this.sent.set(g.id, Buffer.concat(sentParts))
    g.completedAt = Date.now()
    res.end()
  }

  private finish (g: FakeGeneration, res: ServerResponse, body: Buffer): void {
    this.sent.set(g.id, body)
    g.completedAt = Date.now()
    res.end(body)
  }

  private generation (res: ServerResponse, id: string): void {
    this.generationLookups++
    const g = this.generations.get(id)
    if (!g || g.completedAt === null || Date.now() - g.completedAt < this.generationDelayMs) {
      return json(res, 404, { error: { code: 404, message: 'Generation not found' } })
    }
    const body = `{"data":{"id":"${g.id}","model":"${g.model}","provider_name":"${g.provider}","total_cost":${g.cost},"cache_discount":null,` +
      `"upstream_inference_cost":null,"is_byok":false,"streamed":${g.streamed},"cancelled":${g.cancelled},` +
      `"finish_reason":${g.finishReason === null ? 'null' : `"${g.finishReason}"`},"tokens_prompt":${g.promptTokens},"tokens_completion":${g.completionTokens},` +
      `"native_tokens_prompt":${g.promptTokens},"native_tokens_completion":${g.completionTokens},"native_tokens_reasoning":${g.reasoningTokens},` +
      `"native_tokens_cached":${g.cachedTokens},"latency":120,"generation_time":900,"external_user":${g.user === null ? 'null' : JSON.stringify(g.user)},"created_at":"2026-11-28T10:00:00Z"}}`
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(body)
  }
}

function json (res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(text)
}

function sleep (ms: number): Promise<void> { return new Promise((r) => setTimeout(r, ms)) }

export function mulberry32 (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Exact sum of decimal strings, via BigInt at a fixed scale: the test's own float-free oracle. */
export function sumDecimals (values: string[], scale = 30): string {
  let total = 0n
  for (const v of values) {
    const [int, frac = ''] = v.split('.')
    total += BigInt(int + frac.padEnd(scale, '0').slice(0, scale))
  }
  const s = total.toString().padStart(scale + 1, '0')
  const out = `${s.slice(0, -scale)}.${s.slice(-scale)}`.replace(/\.?0+$/, '')
  return out === '' ? '0' : out
}
