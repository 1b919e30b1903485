import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { request } from 'undici'
import type { Identity } from '../identity/identify.js'
import type { Logger } from '../lib/log.js'
import { sendError } from '../lib/errors.js'
import { upstreamHeaders, type UpstreamHeaderPolicy } from './headers.js'

// The virtual model `usage-proxy/my-usage` (SELF_SERVICE_MODEL): listed in GET /v1/models beside
// OpenRouter's, and answered here, in OpenAI's chat-completions shape, without calling OpenRouter
// and without a usage row. Open WebUI renders the answer like any other.

export interface SelfServiceOptions {
  /** The model id users pick. */
  model: string
  /** Its display name in the model list. */
  name: string
  /** OpenRouter's /models, and the same header rewrite as the passthrough (the organization's key). */
  modelsUrl: string
  headers: UpstreamHeaderPolicy
  /** The Markdown answer for this user. */
  summary: (who: Identity, externalUserId: string) => Promise<string>
  log: Logger
}

export interface SelfService {
  readonly model: string
  /** True when this chat request is for the virtual model: then `answer` owns the response. */
  matches: (endpoint: string, body: Record<string, unknown>) => boolean
  answer: (res: ServerResponse, body: Record<string, unknown>, who: Identity, externalUserId: string) => void
  /** GET /v1/models: OpenRouter's list with the virtual model appended. */
  listModels: (req: IncomingMessage, res: ServerResponse, query: string) => void
  /** The virtual model's entry in the model list. */
  entry: { id: string }
}

// Open WebUI sends its background tasks (title, tags, follow-ups, ...) to the chat's model with a
// prompt that starts like this; they want a small JSON object, not a usage report.
const TASK_PROMPT = /^\s*### Task:/
const TASK_ANSWER = JSON.stringify({ title: 'My usage', tags: ['Usage'], follow_ups: ['How much have I used today?'], queries: [] })

export function createSelfService (o: SelfServiceOptions): SelfService {
  const entry = {
    id: o.model,
    name: o.name,
    object: 'model',
    created: Math.floor(Date.now() / 1000),
    owned_by: 'usage-proxy',
    description: 'Your own usage of this organization\'s AI models: spend this month, budget, top models and requests today. Answered by usage-proxy; free.',
    context_length: 4096,
    architecture: { modality: 'text->text', input_modalities: ['text'], output_modalities: ['text'], tokenizer: 'Other', instruct_type: null },
    pricing: { prompt: '0', completion: '0', request: '0', image: '0' },
    top_provider: { context_length: 4096, max_completion_tokens: 1024, is_moderated: false },
    supported_parameters: ['stream'],
  }
  return {
    model: o.model,
    entry,
    matches: (endpoint, body) => endpoint === 'chat/completions' && body.model === o.model,
    answer (res, body, who, externalUserId) {
      const task = isTask(body.messages)
      const text = task ? Promise.resolve(TASK_ANSWER) : o.summary(who, externalUserId)
      text.then((content) => reply(res, body, o.model, content), (err: unknown) => {
        o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'my-usage: could not read the ledger')
        sendError(res, 503, 'service_unavailable', 'usage_unavailable', 'Your usage cannot be read right now; please try again in a moment.')
      })
    },
    listModels (req, res, query) {
      req.resume()
      // identity: the list is read and extended here, so it must arrive uncompressed.
      const headers = upstreamHeaders(req.headers, o.headers, 'identity')
      request(o.modelsUrl + query, { headers, headersTimeout: 30_000, bodyTimeout: 30_000 }).then(async (up) => {
        const text = await up.body.text()
        let list: { data?: unknown } | null = null
        try { list = JSON.parse(text) as { data?: unknown } } catch { /* answered as it came */ }
        if (up.statusCode !== 200 || list === null || !Array.isArray(list.data)) {
          res.writeHead(up.statusCode, { 'content-type': String(up.headers['content-type'] ?? 'application/json') })
          res.end(text)
          return
        }
        list.data.push(entry)
        const out = JSON.stringify(list)
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) })
        res.end(out)
      }).catch((err: unknown) => {
        o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'models: upstream error')
        sendError(res, 502, 'upstream_error', 'upstream_unreachable', 'OpenRouter could not be reached')
      })
    },
  }
}

function isTask (messages: unknown): boolean {
  if (!Array.isArray(messages) || messages.length === 0) return false
  const last = messages[messages.length - 1] as { role?: unknown, content?: unknown } | null
  if (last === null || typeof last !== 'object' || last.role !== 'user') return false
  const content = typeof last.content === 'string'
    ? last.content
    : Array.isArray(last.content) ? last.content.map((p: { text?: unknown }) => typeof p?.text === 'string' ? p.text : '').join('') : ''
  return TASK_PROMPT.test(content)
}

function reply (res: ServerResponse, body: Record<string, unknown>, model: string, content: string): void {
  const id = `chatcmpl-usage-${randomUUID()}`
  const created = Math.floor(Date.now() / 1000)
  const usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, cost: 0 }
  if (body.stream !== true) {
    const out = JSON.stringify({
      id, object: 'chat.completion', created, model,
      choices: [{ index: 0, message: { role: 'assistant', content, refusal: null }, logprobs: null, finish_reason: 'stop' }],
      usage,
    })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out), 'cache-control': 'no-store' })
    res.end(out)
    return
  }
  const chunk = (delta: Record<string, unknown>, finish: string | null): string =>
    `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] })}\n\n`
  let sse = chunk({ role: 'assistant', content: '' }, null)
  // One chunk per line, as a model would stream it.
  for (const piece of content.split(/(?<=\n)/)) sse += chunk({ content: piece }, null)
  sse += chunk({}, 'stop')
  sse += `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [], usage })}\n\n`
  sse += 'data: [DONE]\n\n'
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
  res.end(sse)
}
