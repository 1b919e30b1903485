import t from 'tap'
import { request } from 'undici'
import { classifyRowKind, messageIdOf, taskFromPrompt, DEFAULT_ROW_KIND_OPTIONS as O } from '../src/usage/ledger/row-kind.js'
import { normalizeUsage, mergeUsage } from '../src/usage/tap/extract.js'
import { factsFromGeneration } from '../src/usage/ledger/reconcile.js'
import { parseExact } from '../src/usage/tap/exact-json.js'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// What each row was for (chat, an Open WebUI task, api), Open WebUI's message id, and the rest of
// OpenRouter's usage: cache writes, audio, BYOK upstream cost, /generation's cancelled flag.

const single = (content: unknown) => () => [{ role: 'user', content }]
const TITLE = '### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n### Guidelines:\n- ...'
const owui = { 'x-openwebui-user-id': 'u-1' }

t.test('the task header wins, and names the task', async (t) => {
  t.equal(classifyRowKind({ 'x-openwebui-task': 'title_generation', ...owui }, { streamed: true, messages: single('hi') }), 'title_generation')
  t.equal(classifyRowKind({ 'x-openwebui-task': 'Tags_Generation' }, { streamed: false, messages: single(TITLE) }), 'tags_generation', 'over the prompt')
  t.equal(classifyRowKind({ 'x-task': 'query_generation' }, { streamed: true, messages: single('') }, { ...O, taskHeader: 'x-task' }), 'query_generation', 'configurable name')
  t.equal(classifyRowKind({ 'x-openwebui-task': '{{TASK}}', ...owui }, { streamed: true, messages: single('hi') }), 'chat', 'an unfilled template says nothing')
  t.equal(classifyRowKind({ 'x-openwebui-task': '', ...owui }, { streamed: true, messages: single('hi') }), 'chat', 'empty: a chat turn')
})

t.test('the ### Task: heuristic: non-stream, one user message', async (t) => {
  const cases: Array<[string, string]> = [
    [TITLE, 'title_generation'],
    ['### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more specific subtopic tags.', 'tags_generation'],
    ['### Task:\nSuggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next', 'follow_up_generation'],
    ['### Task:\nAnalyze the chat history to determine the necessity of generating search queries, in the given language.', 'query_generation'],
    ['### Task:\nYou are an autocompletion system. Continue the text in `<text>` based on the **completion type**', 'autocomplete_generation'],
    ['### Task:\nGenerate a detailed prompt for am image generation task based on the given language and context.', 'image_prompt_generation'],
    ['### Task:\nSummarize the document below.', 'task'],
  ]
  for (const [prompt, kind] of cases) t.equal(classifyRowKind(owui, { streamed: false, messages: single(prompt) }), kind, kind)
  t.equal(classifyRowKind(owui, { streamed: false, messages: single([{ type: 'text', text: TITLE }]) }), 'title_generation', 'content parts')
  t.equal(classifyRowKind(owui, { streamed: true, messages: single(TITLE) }), 'chat', 'streamed: a chat')
  t.equal(classifyRowKind(owui, { streamed: false, messages: () => [{ role: 'system', content: 'x' }, { role: 'user', content: TITLE }] }), 'chat', 'two messages: a chat')
  t.equal(classifyRowKind(owui, { streamed: false, messages: single('Tell me about ### Task: lists') }), 'chat', 'must begin with it')
  t.equal(classifyRowKind({}, { streamed: false, messages: single(TITLE) }), 'title_generation', 'the prompt says so even without identity headers')
  t.equal(taskFromPrompt('not an array'), null)
  t.equal(taskFromPrompt([null]), null)
  t.equal(taskFromPrompt([{ role: 'assistant', content: TITLE }]), null)
})

t.test('chat when Open WebUI sent it, api otherwise; the body is read only when needed', async (t) => {
  let reads = 0
  const facts = { streamed: true, messages: () => { reads++; return [] } }
  t.equal(classifyRowKind(owui, facts), 'chat')
  t.equal(classifyRowKind({ 'x-openwebui-user-jwt': 'a.b.c' }, facts), 'chat')
  t.equal(classifyRowKind({ 'x-openwebui-message-id': 'm-1' }, facts), 'chat')
  t.equal(classifyRowKind({}, facts), 'api')
  t.equal(classifyRowKind({ 'x-openwebui-task': 'title_generation' }, { streamed: false, messages: facts.messages }), 'title_generation')
  t.equal(reads, 0, 'streamed requests and declared tasks never read the messages')
  t.equal(messageIdOf({ 'x-openwebui-message-id': ' m-42 ' }), 'm-42')
  t.equal(messageIdOf({ 'x-openwebui-message-id': '{{MESSAGE_ID}}' }), null)
  t.equal(messageIdOf({}), null)
  t.equal(messageIdOf({ 'x-m': 'm-1' }, { ...O, messageIdHeader: 'x-m' }), 'm-1')
})

t.test('usage: cache writes, audio, upstream cost only for BYOK', async (t) => {
  const u = normalizeUsage(parseExact('{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":2,"cache_write_tokens":7,"audio_tokens":3},"cost":0.5,"is_byok":false,"cost_details":{"upstream_inference_cost":0.4}}'))
  t.match(u, { cacheWriteTokens: 7, audioTokens: 3, upstreamCostUsd: null, isByok: false })
  const byok = normalizeUsage(parseExact('{"prompt_tokens":10,"completion_tokens":5,"cost":0.01,"is_byok":true,"cost_details":{"upstream_inference_cost":0.2}}'))
  t.match(byok, { upstreamCostUsd: '0.2', isByok: true })
  const anthropic = normalizeUsage(parseExact('{"input_tokens":10,"cache_creation_input_tokens":4,"output_tokens":1}'))
  t.equal(anthropic?.cacheWriteTokens, 4)
  t.equal(mergeUsage(anthropic, normalizeUsage(parseExact('{"output_tokens":9,"cost":1}')))?.cacheWriteTokens, 4, 'kept across Anthropic events')
  const f = factsFromGeneration('{"data":{"id":"g","total_cost":0.5,"native_tokens_prompt":1,"native_tokens_completion":2,"is_byok":false,"upstream_inference_cost":0.4,"cancelled":true,"provider_name":"P"}}')
  t.match(f, { cancelled: true, provider: 'P', usage: { upstreamCostUsd: null } })
})

t.test('through the proxy: kind, message id and the full usage land in the row', async (t) => {
  const fake = await new FakeOpenRouter(11).start()
  const db: TestDb = await createTestDb({ migrated: true })
  const s: Started = await startSidecar(baseEnv(fake, db.url))
  t.teardown(async () => { await s.sidecar.stop('test end'); await fake.close(); await db.drop() })
  const post = async (headers: Record<string, string>, body: unknown): Promise<string> => {
    const res = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
    const text = await res.body.text()
    return /gen-[0-9-]+/.exec(text)![0]
  }
  const chat = await post({ ...owui, 'x-openwebui-message-id': 'msg-1', 'x-openwebui-task': '{{TASK}}' }, { model: 'fake/ok', stream: true, messages: [{ role: 'user', content: 'hi' }] })
  const title = await post(owui, { model: 'fake/ok', stream: false, messages: [{ role: 'user', content: TITLE }] })
  const tags = await post({ ...owui, 'x-openwebui-task': 'tags_generation' }, { model: 'fake/ok', messages: [{ role: 'user', content: 'x' }] })
  const api = await post({}, { model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }] })
  const row = async (gen: string) => (await rowsSoon(() => db.sql`select kind, message_id, cache_write_tokens, audio_tokens, upstream_cost_usd, is_byok from usage_events where generation_id = ${gen}`))[0]
  t.match(await row(chat), { kind: 'chat', message_id: 'msg-1' })
  t.match(await row(title), { kind: 'title_generation', message_id: null })
  t.match(await row(tags), { kind: 'tags_generation' })
  t.match(await row(api), { kind: 'api' })
  const g = fake.generations.get(api)!
  t.match(await row(api), { cache_write_tokens: g.cacheWriteTokens, audio_tokens: g.audioTokens, upstream_cost_usd: null, is_byok: false })
  t.notOk(fake.requests.some((r) => r.headers['x-openwebui-task'] !== undefined || r.headers['x-openwebui-message-id'] !== undefined), 'these headers stay with the sidecar')
  const views = await db.sql`select kind, sum(requests)::int as n from spend_per_user_month group by kind order by kind`
  t.same(views.map((v) => [v.kind, v.n]), [['api', 1], ['chat', 1], ['tags_generation', 1], ['title_generation', 1]], 'the billing views split by kind')
})

t.test('a reconciled generation records OpenRouter\'s cancelled flag', async (t) => {
  const fake = await new FakeOpenRouter(12).start()
  const db: TestDb = await createTestDb({ migrated: true })
  const s: Started = await startSidecar(baseEnv(fake, db.url))
  t.teardown(async () => { await s.sidecar.stop('test end'); await fake.close(); await db.drop() })
  const ac = new AbortController()
  const res = await request(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'fake/slow', stream: true, messages: [] }), signal: ac.signal })
  let seen = ''
  await new Promise<void>((resolve) => res.body.on('data', (c: Buffer) => { seen += c.toString(); if (/gen-[0-9]+-[0-9]+/.test(seen)) resolve() }))
  const gen = /gen-[0-9]+-[0-9]+/.exec(seen)![0]
  res.body.on('error', () => {})
  ac.abort()
  const [r] = await rowsSoon(() => db.sql`select outcome, cancelled, usage_source from usage_events where generation_id = ${gen}`, 15_000)
  t.equal(fake.generations.get(gen)!.cancelled, true, 'OpenRouter stopped it')
  t.match(r, { outcome: 'client_aborted', usage_source: 'generation', cancelled: true })
})
