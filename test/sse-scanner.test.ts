import t from 'tap'
import { MAX_EVENT_BYTES, SseScanner, type SseEvent } from '../src/usage/tap/sse-scanner.js'
import { ResponseTap } from '../src/usage/tap/response-tap.js'
import { mulberry32 } from './support/fake-openrouter.js'

const collect = (parts: Array<string | Buffer>): Array<{ type?: string, data: string }> => {
  const out: Array<{ type?: string, data: string }> = []
  const s = new SseScanner((e: SseEvent) => out.push(e.type === undefined ? { data: e.data.toString('utf8') } : { type: e.type, data: e.data.toString('utf8') }))
  for (const p of parts) s.push(Buffer.isBuffer(p) ? p : Buffer.from(p))
  s.end()
  return out
}

t.test('comments, blank lines and keep-alives produce no events', async (t) => {
  t.same(collect([': OPENROUTER PROCESSING\n\n', ': OPENROUTER PROCESSING\n\n']), [])
  t.same(collect([': x\n\ndata: {"a":1}\n\n: y\n\n']), [{ data: '{"a":1}' }])
})

t.test('LF, CRLF and lone CR line ends all work', async (t) => {
  const want = [{ data: 'one' }, { data: 'two' }]
  t.same(collect(['data: one\n\ndata: two\n\n']), want)
  t.same(collect(['data: one\r\n\r\ndata: two\r\n\r\n']), want)
  t.same(collect(['data: one\r\rdata: two\r\r']), want)
})

t.test('CRLF split between two reads is one line end, not two', async (t) => {
  t.same(collect(['data: one\r', '\n\r', '\ndata: two\r\n', '\r\n']), [{ data: 'one' }, { data: 'two' }])
  t.same(collect(['data: a\r', '\ndata: b\r\n\r\n']), [{ data: 'a\nb' }], 'CR then LF in the next read ends one line only')
})

t.test('multi-line data, event types, no space after colon, and a last event without a blank line', async (t) => {
  t.same(collect(['event: response.completed\ndata: {"x":\ndata: 1}\n\n']), [{ type: 'response.completed', data: '{"x":\n1}' }])
  t.same(collect(['data:tight\n\n']), [{ data: 'tight' }])
  t.same(collect(['data: tail']), [{ data: 'tail' }])
  t.same(collect(['id: 7\nretry: 10\ndata: x\n\n']), [{ data: 'x' }], 'id and retry ignored')
  t.same(collect(['event: ping\n\n']), [], 'an event without data is not dispatched')
})

t.test('a multi-byte character split between reads arrives whole', async (t) => {
  const bytes = Buffer.from('data: {"c":"日本 🌍"}\n\n')
  const cut = bytes.indexOf(Buffer.from('🌍')) + 2
  t.same(collect([bytes.subarray(0, cut), bytes.subarray(cut)]), [{ data: '{"c":"日本 🌍"}' }])
})

t.test('the scanner does not keep references into buffers the caller reuses', async (t) => {
  const out: string[] = []
  const s = new SseScanner((e) => out.push(e.data.toString()))
  const buf = Buffer.from('data: first-part\n')
  s.push(buf)
  buf.fill(0x41) // the caller reuses its buffer
  s.push(Buffer.from('\n'))
  t.same(out, ['first-part'])
})

// Property: however a recorded stream is cut into reads, the events are the same.
const recorded = [
  ': OPENROUTER PROCESSING\n\n',
  'data: {"id":"gen-1","provider":"P","model":"m","choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
  'data: {"id":"gen-1","choices":[{"delta":{"content":"Grüße 日本 🌍 \\"usage\\": {}"},"finish_reason":null}]}\n\n',
  ': OPENROUTER PROCESSING\n\n',
  'data: {"id":"gen-1","choices":[{"delta":{"content":"!"},"finish_reason":"stop"}]}\n\n',
  'data: {"id":"gen-1","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":15,"total_tokens":25,"cost":0.00012345678901234567891}}\n\n',
  'data: [DONE]\n\n',
].join('')

t.test('property: random splits of recorded streams (LF and CRLF) give identical events and usage', async (t) => {
  const rnd = mulberry32(7)
  for (const text of [recorded, recorded.replace(/\n/g, '\r\n')]) {
    const bytes = Buffer.from(text)
    const whole = collect([bytes])
    t.equal(whole.length, 5)
    for (let round = 0; round < 300; round++) {
      const parts: Buffer[] = []
      let at = 0
      while (at < bytes.length) {
        const n = 1 + Math.floor(rnd() * (round % 3 === 0 ? 3 : 40))
        parts.push(bytes.subarray(at, at + n))
        at += n
      }
      const got = collect(parts)
      if (JSON.stringify(got) !== JSON.stringify(whole)) { t.fail(`split ${round} differs`); return }
      const tap = new ResponseTap('sse')
      for (const p of parts) tap.write(p)
      const r = tap.end()
      if (r.usage?.costUsd !== '0.00012345678901234567891' || r.generationId !== 'gen-1' || r.finishReason !== 'stop' || !r.done) {
        t.fail(`tap result differs on split ${round}: ${JSON.stringify(r)}`)
        return
      }
    }
  }
  t.pass('300 random splits x 2 line-end styles agree')
})

t.test('a 50 MB line costs linear work and bounded memory; the events after it are still found', async (t) => {
  const events: string[] = []
  const s = new SseScanner((e) => events.push(e.data.toString()))
  const filler = Buffer.alloc(64 * 1024, 0x78)
  let pushed = 0
  let maxBuffered = 0
  const push = (b: Buffer) => { s.push(b); pushed += b.length; maxBuffered = Math.max(maxBuffered, s.buffered) }
  push(Buffer.from('data: {"id":"gen-big","choices":[{"delta":{"content":"'))
  for (let i = 0; i < 800; i++) push(filler) // 52 MB without a line end
  push(Buffer.from('"}}]}\n\n: keep-alive\n\ndata: {"usage":{"cost":0.5}}\n\n'))
  s.end()
  t.same(events, ['{"usage":{"cost":0.5}}'], 'the oversized event is skipped, the next one delivered')
  t.equal(s.oversized, 1)
  t.ok(s.work <= 3 * pushed, `work ${s.work} for ${pushed} bytes: linear, not quadratic`)
  t.ok(maxBuffered <= 2 * MAX_EVENT_BYTES, `at most ${maxBuffered} bytes held`)
})

t.test('many small lines in one read, with a CR only at its end: still linear', async (t) => {
  const s = new SseScanner(() => {})
  const text = Buffer.from('data: a\n\n'.repeat(100_000) + 'data: b\r\r')
  s.push(text)
  t.ok(s.work <= 3 * text.length, `work ${s.work} for ${text.length} bytes`)
})

t.test('an event over the cap made of many data lines is skipped; one under it passes; lines split across reads are joined', async (t) => {
  const got: string[] = []
  const s = new SseScanner((e) => got.push(e.data.toString()), 64)
  s.push(Buffer.from('data: ' + 'a'.repeat(40) + '\ndata: ' + 'b'.repeat(40) + '\n\n'))
  s.push(Buffer.from('data: small'))
  s.push(Buffer.from(' one\n\n'))
  s.push(Buffer.from('data: ' + 'c'.repeat(50)))
  s.push(Buffer.from('c'.repeat(50) + '\n\n'))
  s.push(Buffer.from(': ' + 'comment'.repeat(20)))
  s.push(Buffer.from('\n\nevent: x\ndata: after\n\n'))
  s.end()
  t.same(got, ['small one', 'after'])
  t.equal(s.oversized, 2, 'the two large events, not the long comment')
  t.equal(s.buffered, 0)
})

t.test('the tap skips an oversized event and still reads usage after it', async (t) => {
  const tap = new ResponseTap('sse')
  tap.write(Buffer.from('data: {"id":"gen-x","model":"m","choices":[{"delta":{"content":""}}]}\n\n'))
  tap.write(Buffer.from('data: {"choices":[{"delta":{"content":"' + 'y'.repeat(MAX_EVENT_BYTES) + '"}}]}\n\n'))
  tap.write(Buffer.from('data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":0.000123456789012345678}}\n\n'))
  const r = tap.end()
  t.same([r.generationId, r.usage?.costUsd, r.malformed], ['gen-x', '0.000123456789012345678', false])
})
