import t from 'tap'
import { exactObjectNearEnd, parseExact, decimal, count, rawNumber } from '../src/usage/tap/exact-json.js'
import { normalizeUsage, mergeUsage } from '../src/usage/tap/extract.js'
import { ResponseTap, answerFormat } from '../src/usage/tap/response-tap.js'
import { factsFromGeneration } from '../src/usage/ledger/reconcile.js'

t.test('exact parser keeps every digit a double would lose', async (t) => {
  const v = parseExact('{"cost": 0.00012345678901234567891, "n": -1.5e-7, "s": "x\\"y", "a": [1, true, null], "o": {}}') as any
  t.equal(v.cost, '0.00012345678901234567891')
  t.equal(v.n, '-1.5e-7')
  t.equal(v.s, 'x"y')
  t.same(v.a, ['1', true, null])
  t.throws(() => parseExact('{"a":1} x'))
  t.throws(() => parseExact('{"a":}'))
  t.throws(() => parseExact('{"a":"unterminated'))
  t.equal(decimal('1e-7'), '1e-7')
  t.equal(decimal('abc'), undefined)
  t.equal(decimal(0.5), undefined, 'a double\'s digits are not the ones sent')
  t.equal(count('12'), 12)
  t.equal(count('-1'), undefined)
  t.equal(count('1.5'), undefined)
})

t.test('usage near the end is found, and a "usage" inside generated text is not taken for it', async (t) => {
  const body = '{"choices":[{"message":{"content":"the \\"usage\\": {\\"cost\\": 9} trick"}}],"usage":{"prompt_tokens":3,"cost":0.1000000000000000000001}}'
  const exact = exactObjectNearEnd(body, 'usage') as any
  t.equal(exact.cost, '0.1000000000000000000001')
  t.equal(exactObjectNearEnd('{"c":"\\"usage\\": {\\"cost\\": 9}"}', 'usage'), undefined, 'an escaped look-alike is never a key')
})

t.test('usage shapes of every endpoint normalize to one', async (t) => {
  t.same(normalizeUsage(parseExact('{"prompt_tokens":10,"completion_tokens":15,"total_tokens":25,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":5},"cost":0.0012,"is_byok":false,"cost_details":{"upstream_inference_cost":null}}')),
    { promptTokens: 10, completionTokens: 15, totalTokens: 25, cachedTokens: 2, reasoningTokens: 5, costUsd: '0.0012', upstreamCostUsd: null, isByok: false })
  t.same(normalizeUsage(parseExact('{"input_tokens":7,"input_tokens_details":{"cached_tokens":1},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":10,"cost":1e-5}')),
    { promptTokens: 7, completionTokens: 3, totalTokens: 10, cachedTokens: 1, reasoningTokens: 2, costUsd: '1e-5', upstreamCostUsd: null, isByok: null })
  t.same(normalizeUsage(parseExact('{"input_tokens":7,"cache_read_input_tokens":4,"output_tokens":3,"cost":0.5}'))?.totalTokens, 10)
  t.equal(normalizeUsage(parseExact('{"foo":1}')), null)
  t.equal(normalizeUsage(null), null)
  const merged = mergeUsage(normalizeUsage({ input_tokens: '5' }), normalizeUsage({ output_tokens: '9', cost: '0.2' }))
  t.same([merged?.promptTokens, merged?.completionTokens, merged?.totalTokens, merged?.costUsd], [5, 9, 14, '0.2'])
})

t.test('content type decides how the body is read', async (t) => {
  t.equal(answerFormat('text/event-stream; charset=utf-8'), 'sse')
  t.equal(answerFormat('application/json'), 'json')
  t.equal(answerFormat('text/plain'), 'other')
  t.equal(answerFormat(undefined), 'other')
  const tap = new ResponseTap('other')
  tap.write(Buffer.from('anything'))
  t.same(tap.end().usage, null)
})

t.test('the tap reads usage, errors, finish reasons and final responses, and nothing that only looks like them', async (t) => {
  const run = (events: string[]) => {
    const tap = new ResponseTap('sse')
    for (const e of events) tap.write(Buffer.from(e))
    return tap.end()
  }
  const first = 'data: {"id":"gen-t","model":"m","choices":[{"delta":{"content":""},"finish_reason":null}]}\n\n'
  const r = run([first, 'data: {"choices":[{"delta":{"content":"\\"usage\\": {\\"cost\\": 9} 日本 \\"error\\":{"},"finish_reason":null}]}\n\n'])
  t.same([r.usage, r.error, r.finishReason, r.malformed], [null, null, null, false], 'keys inside a string are escaped: not taken')
  t.equal(run([first, 'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\n']).finishReason, 'length')
  t.equal(run([first, 'data: {"error":{"code":502,"message":"gone"}}\n\n']).error?.message, 'gone')
  t.equal(run([first, 'data: {"usage": {"prompt_tokens":1,"cost":0.5}}\n\n']).usage?.costUsd, '0.5')
  t.equal(run([first, 'data: {"usage":null,"choices":[{"finish_reason":null}]}\n\n']).usage, null)
  const fin = run(['event: response.completed\ndata: {"type":"response.completed","response":{"id":"gen-r","status":"completed","usage":{"input_tokens":2,"output_tokens":3,"cost":0.25}}}\n\n'])
  t.same([fin.generationId, fin.usage?.totalTokens, fin.usage?.costUsd, fin.finishReason], ['gen-r', 5, '0.25', 'completed'])
})

t.test('a non-JSON or empty body is marked, not fatal', async (t) => {
  const tap = new ResponseTap('json')
  tap.write(Buffer.from('<html>'))
  t.equal(tap.end().malformed, true)
  const sse = new ResponseTap('sse')
  sse.write(Buffer.from('data: {broken\n\n'))
  t.equal(sse.end().malformed, true)
})

t.test('anthropic-style stream: usage split over message_start and message_delta', async (t) => {
  const tap = new ResponseTap('sse')
  tap.write(Buffer.from('event: message_start\ndata: {"type":"message_start","message":{"id":"gen-9","model":"m","usage":{"input_tokens":12,"output_tokens":1}}}\n\n'))
  tap.write(Buffer.from('event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n'))
  tap.write(Buffer.from('event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":30,"cost":0.00042}}\n\n'))
  const r = tap.end()
  t.same([r.generationId, r.usage?.promptTokens, r.usage?.completionTokens, r.usage?.costUsd, r.finishReason], ['gen-9', 12, 30, '0.00042', 'end_turn'])
})

t.test('/generation answers become usage, exactly', async (t) => {
  const f = factsFromGeneration('{"data":{"id":"gen-1","model":"m","provider_name":"P","total_cost":0.00000123456789012345678,"native_tokens_prompt":5,"native_tokens_completion":6,"native_tokens_cached":1,"native_tokens_reasoning":0,"tokens_prompt":4,"finish_reason":"stop","is_byok":true,"upstream_inference_cost":0.001}}')
  t.same(f, { usage: { promptTokens: 5, completionTokens: 6, totalTokens: 11, cachedTokens: 1, reasoningTokens: 0, costUsd: '0.00000123456789012345678', upstreamCostUsd: '0.001', isByok: true }, servedModel: 'm', provider: 'P', finishReason: 'stop' })
  t.equal(factsFromGeneration('{"error":{}}'), null)
  t.same(factsFromGeneration('{"data":{"id":"x"}}')?.usage, null)
})

t.test('rawNumber reads back the exact digits JSON.parse rounded, and only for the same value', async (t) => {
  const text = '{"choices":[{"message":{"content":"\\"cost\\": 5"}}],"other":{"cost":0.5},"usage":{"cost" : 0.00012345678901234567891,"cost_details":{"upstream_inference_cost":1E-7}}}'
  const o = JSON.parse(text)
  t.equal(rawNumber(text, 'cost', o.usage.cost), '0.00012345678901234567891')
  t.equal(rawNumber(text, 'cost', o.other.cost), '0.5', 'the look-alike with its own value')
  t.equal(rawNumber(text, 'upstream_inference_cost', o.usage.cost_details.upstream_inference_cost), '1E-7')
  t.equal(rawNumber(text, 'cost', 0.25), undefined, 'no match for a value that is not there')
  t.equal(rawNumber(text, 'cost', null), undefined)
  t.equal(normalizeUsage(o.usage, text)?.costUsd, '0.00012345678901234567891')
  t.equal(normalizeUsage({ ...o.usage, prompt_tokens: 1 })?.costUsd, null, 'without the text only a double is known: the cost is unknown, never String(double)')
  const escaped = '{"prompt_tokens":3,"co\\u0073t":0.00012345678901234567891}'
  t.equal(normalizeUsage(JSON.parse(escaped), escaped)?.costUsd, null, 'digits that cannot be read back: unknown, for /generation to fill')
  t.equal(normalizeUsage(JSON.parse(escaped), escaped)?.promptTokens, 3)
})
