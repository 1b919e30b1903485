import t from 'tap'
import { BodyScan, FIELD_BYTES, stringAt } from '../src/proxy/body/json-body.js'
import { scanBody } from './support/scan-body.js'
import { MAX_PARTS, TEXT_BYTES } from '../src/proxy/body/first-message.js'
import { decodeJsonString } from '../src/proxy/body/json-text.js'
import { mulberry32 } from './support/fake-openrouter.js'

// What the request path reads of the first message, and its bounds: the role, and the start of
// the content, read by the body's own scan with no parse, however large or deep the message is.
// (test/json-body.test.ts holds singleMessage to JSON.parse on random documents.)

const single = (body: string) => scanBody(Buffer.from(body))!.singleMessage()

t.test('a content string is read to TEXT_BYTES, never into a character or an escape', async (t) => {
  const long = 'a'.repeat(TEXT_BYTES + 500)
  t.same(single(JSON.stringify({ messages: [{ role: 'user', content: long }] })), [{ role: 'user', content: 'a'.repeat(TEXT_BYTES) }])
  // A 3-byte character across the cut is left out whole.
  const cjk = 'a'.repeat(TEXT_BYTES - 1) + '日' + 'b'
  t.same(single(JSON.stringify({ messages: [{ role: 'user', content: cjk }] })), [{ role: 'user', content: 'a'.repeat(TEXT_BYTES - 1) }])
  // An escape across the cut too.
  const escaped = `{"messages":[{"role":"user","content":"${'a'.repeat(TEXT_BYTES - 3)}\\u0041b"}]}`
  t.same(single(escaped), [{ role: 'user', content: 'a'.repeat(TEXT_BYTES - 3) }])
  const fits = `{"messages":[{"role":"user","content":"${'a'.repeat(TEXT_BYTES - 6)}\\u0041b"}]}`
  t.same(single(fits), [{ role: 'user', content: 'a'.repeat(TEXT_BYTES - 6) + 'A' }], 'an escape that ends at the cut is decoded')
})

t.test('parts: the first MAX_PARTS, each text to TEXT_BYTES; a long role or type is none', async (t) => {
  const parts = Array.from({ length: MAX_PARTS + 5 }, (_, i) => ({ type: 'text', text: i === 0 ? 'x'.repeat(TEXT_BYTES * 2) : String(i), image_url: { url: 'u' } }))
  const got = single(JSON.stringify({ messages: [{ role: 'user', content: parts }] }))!
  const content = (got[0] as { content: Array<{ type: string, text: string }> }).content
  t.equal(content.length, MAX_PARTS)
  t.equal(content[0].text, 'x'.repeat(TEXT_BYTES))
  t.same(content[1], { type: 'text', text: '1' }, 'other members of a part are not kept')
  t.same(single(JSON.stringify({ messages: [{ role: 'u'.repeat(65), content: 'x' }] })), [{ content: 'x' }], 'a 65-byte role is no role')
  t.same(single('{"messages":[{"role":"\\u0075\\u0073\\u0065\\u0072","content":[{"type":"\\u0074ext","text":"\\u0023## Task: t"}]}]}'),
    [{ role: 'user', content: [{ type: 'text', text: '### Task: t' }] }], 'escaped values')
  t.same(single('{"messages":[{"r\\u006fle":"user","\\u0063ontent":[{"typ\\u0065":"text","t\\u0065xt":"hi"}]}]}'),
    [{ role: 'user', content: [{ type: 'text', text: 'hi' }] }], 'escaped keys')
  t.same(single(`{"messages":[{"${'\\u0072'.repeat(30)}":"user","role":"system"}]}`), [{ role: 'system' }], 'a long escaped key is not decoded, and is not role')
})

t.test('the last duplicate wins, as JSON.parse keeps it, and only the last messages counts', async (t) => {
  t.same(single('{"messages":[{"role":"user","content":"a","role":"system","content":["x"]}]}'), [{ role: 'system', content: [{}] }])
  t.same(single('{"messages":[{"role":"user","content":"a","content":3}]}'), [{ role: 'user' }])
  t.equal(single('{"messages":[{"role":"user","content":"x"}],"messages":[1,2]}'), null)
  t.same(single('{"messages":[1,2],"messages":[{"role":"user","content":"y"}]}'), [{ role: 'user', content: 'y' }])
  t.equal(single('{"messages":[{"role":"user","content":"x"}],"messages":3}'), null)
  t.same(single('{"messages":[{"role":"user","content":"x"}],"x":[{"role":"a","content":"b"}],"y":{"messages":[]},"stream_options":{"a":[1]},"model":"m"}'), [{ role: 'user', content: 'x' }],
    'later arrays and objects do not disturb it')
  t.same(single('{"x":{"messages":[{"role":"a"}]},"messages":[{"content":"c"}]}'), [{ content: 'c' }], 'a nested messages is not the one')
})

t.test('a message nested millions deep, or with a million members, is read in the same pass, sliced', async (t) => {
  const n = 3_000_000
  const deep = Buffer.from(`{"model":"m","messages":[{"role":"user","x":${'['.repeat(n)}${']'.repeat(n)},"content":"### Task: title"}]}`)
  const keys = Buffer.from(`{"messages":[{${Array.from({ length: 1_000_000 }, (_, i) => `"k${i}":{"role":"system"}`).join(',')},"role":"user","content":"### Task: tags"}]}`)
  for (const [name, body, content] of [['deep', deep, '### Task: title'], ['keys', keys, '### Task: tags']] as const) {
    const scan = new BodyScan(body)
    let steps = 0
    while (!scan.step(512 * 1024)) steps++
    t.ok(steps >= 10, `${name}: ${steps} slices`)
    t.same(scan.body!.singleMessage(), [{ role: 'user', content }], name)
  }
})

t.test('strings are decoded as JSON.parse decodes them, to FIELD_BYTES', async (t) => {
  const r = mulberry32(21)
  const alphabet = ['a', 'ü', '日', '🌍', '"', '\\', '/', '\n', '\u0000', '\u001f', '\u2028', '\ud800', '\udc00', '\ud83d\ude00']
  for (let k = 0; k < 3000; k++) {
    let s = ''
    const len = Math.floor(r() * 12)
    for (let i = 0; i < len; i++) s += alphabet[Math.floor(r() * alphabet.length)]
    // JSON.stringify's spelling, and one with every character as \\u escapes.
    const spellings = [JSON.stringify(s), '"' + [...s].map((c) => [...c].map((u) => '\\u' + u.charCodeAt(0).toString(16).padStart(4, '0')).join('')).join('') + '"']
    for (const q of spellings) {
      const b = Buffer.from(q)
      if (decodeJsonString(b, 0, b.length) !== JSON.parse(q)) { t.fail(`${q}`); return }
    }
  }
  const model = 'm'.repeat(FIELD_BYTES + 10)
  t.equal(scanBody(Buffer.from(JSON.stringify({ model })))!.string('model'), 'm'.repeat(FIELD_BYTES), 'a string field is read to FIELD_BYTES')
  const b = Buffer.from('{"user":"a\\"b"}')
  t.equal(stringAt(b, { start: 8, end: 14 }), 'a"b')
  t.equal(stringAt(b, { start: 1, end: 7 }), 'user')
})
