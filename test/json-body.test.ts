import { spawnSync } from 'node:child_process'
import t, { type Test } from 'tap'
import { BodyScan, stringAt, type JsonBody } from '../src/proxy/body/json-body.js'
import { scanBody } from './support/scan-body.js'
import { JsonScanner } from '../src/proxy/body/json-scan.js'
import { simdStrings, tuneStrings } from '../src/proxy/body/json-strings.js'
import { mulberry32 } from './support/fake-openrouter.js'

// The byte scanner against JSON.parse, its oracle: on random and adversarial documents the
// verdict, the fields read and the spliced document must be exactly what parsing would give.

/** What the proxy did before the scanner: parse the whole body; null when it is refused. */
function oracle (buf: Buffer): Record<string, any> | null {
  try {
    const v: unknown = JSON.parse(buf.toString('utf8'))
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? v as Record<string, any> : null
  } catch { return null }
}

const NEW_USER = 'org_user_"quoted"\\ü'

/**
 * Checks one document; returns a description of the first disagreement, or null. `o` is the
 * oracle's verdict on these bytes: JSON.parse gives the same for the same bytes, so a caller that
 * checks one document several ways (in place, in slices, another SIMD setting) parses it once.
 * Most of this file's time is JSON.parse throwing on broken documents. `o` is never modified.
 */
function disagreement (buf: Buffer, budget?: number, room?: number, o: Record<string, any> | null = oracle(buf)): string | null {
  let body: JsonBody | null
  let guard: Buffer | null = null
  if (room !== undefined) {
    // As the proxy reads a large body: in memory with `room` free bytes after it (spliced in
    // place when `user` fits), then 64 guard bytes that must never be touched.
    const mem = Buffer.allocUnsafeSlow(buf.length + room + 64)
    buf.copy(mem)
    mem.fill(0xa5, buf.length)
    guard = mem.subarray(buf.length + room)
    buf = mem.subarray(0, buf.length)
  }
  if (budget === undefined && room === undefined) body = scanBody(buf)
  else {
    const scan = new BodyScan(buf, room)
    let steps = 0
    while (!scan.step(budget)) steps++
    body = scan.body
    if (steps > buf.length + 1) return 'scan does not progress'
  }
  if ((body === null) !== (o === null)) return `verdict: scanner ${body === null ? 'refused' : 'accepted'}, JSON.parse ${o === null ? 'refused' : 'accepted'}`
  if (body === null || o === null) return null
  const str = (v: unknown) => typeof v === 'string' ? v : undefined
  for (const f of ['model', 'user']) {
    if (body.string(f) !== str(o[f])) return `${f}: ${body.string(f)} vs ${str(o[f])}`
  }
  for (const f of ['max_tokens', 'max_completion_tokens']) {
    const want = typeof o[f] === 'number' ? o[f] : undefined
    if (!Object.is(body.number(f), want)) return `${f}: ${body.number(f)} vs ${want}`
  }
  if (body.isTrue('stream') !== (o.stream === true)) return 'stream'
  const single = canonical(body.singleMessage())
  const wantSingle = canonical(singleMessageOf(o))
  if (single !== wantSingle) return `singleMessage: ${single} vs ${wantSingle}`
  for (const f of ['messages', 'stream_options']) {
    const span = body.span(f)
    if ((span === undefined) !== !(f in o)) return `${f} presence`
    if (span && JSON.stringify(JSON.parse(body.bytes.toString('utf8', span.start, span.end))) !== JSON.stringify(o[f])) return `${f} span`
  }
  const model = body.string('model')
  const spliced = body.withUser(NEW_USER)
  if (guard && guard.some((c) => c !== 0xa5)) return 'the in-place splice wrote past its room'
  if (body.string('model') !== model) return 'a field read after the splice changed'
  // As Object.assign(o, { user }) would make it (a user already there keeps its place), on a copy.
  const expected = JSON.stringify({ ...o, user: NEW_USER })
  let got: string
  try { got = JSON.stringify(JSON.parse(spliced.toString('utf8'))) } catch (e) { return `spliced does not parse: ${(e as Error).message}: ${spliced.toString('utf8').slice(0, 200)}` }
  if (got !== expected) return `spliced: ${got.slice(0, 300)} vs ${expected.slice(0, 300)}`
  return null
}

/** The single message as JSON.parse gives it, reduced to what JsonBody.singleMessage keeps. */
function singleMessageOf (o: Record<string, any>): unknown {
  const m = o.messages
  if (!Array.isArray(m) || m.length !== 1) return null
  const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)
  const first = m[0]
  if (!isObject(first)) return [null]
  const out: Record<string, unknown> = {}
  if (typeof first.role === 'string') out.role = first.role
  if (typeof first.content === 'string') out.content = first.content
  else if (Array.isArray(first.content)) {
    out.content = first.content.slice(0, 16).map((p) => {
      const part: Record<string, unknown> = {}
      if (isObject(p) && typeof p.type === 'string') part.type = p.type
      if (isObject(p) && typeof p.text === 'string') part.text = p.text
      return part
    })
  }
  return [out]
}

/** JSON with keys sorted: the order of a message's members is not what is compared. */
function canonical (v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => x !== null && typeof x === 'object' && !Array.isArray(x)
    ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1)))
    : x)
}

// ---- a generator of JSON text that JSON.stringify would never write ----

type Rng = () => number
const pick = <T>(r: Rng, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]
const WS = ['', '', '', ' ', '\n', '\t', '\r\n', '  \t ']
const KEYS = ['model', 'stream', 'user', 'max_tokens', 'max_completion_tokens', 'stream_options', 'messages', 'include_usage',
  'temperature', '__proto__', 'constructor', '0', '12', '', 'us', 'userx', 'User', 'ü', '日本', 'user\u0000']
const NUMBERS = ['0', '-0', '1', '-1', '12', '1.5', '-0.0', '1e3', '1E3', '1e+3', '1e-3', '1.25E-10', '123456789012345678901234567890',
  '1e400', '-1e400', '0.1e1', '9007199254740993', '2147483648', '5e-324', '1.7976931348623157e308']

function ws (r: Rng): string { return pick(r, WS) }

/** A JSON string literal for s, escaped in one of several valid ways. */
function quote (r: Rng, s: string): string {
  let out = '"'
  for (const ch of s) {
    const code = ch.codePointAt(0)!
    const mode = r()
    if (ch === '"' || ch === '\\' || code < 0x20) {
      if (mode < 0.5 && ch === '"') out += '\\"'
      else if (mode < 0.5 && ch === '\\') out += '\\\\'
      else out += unicodeEscape(ch, r)
    } else if (mode < 0.1) {
      out += unicodeEscape(ch, r)
    } else if (mode < 0.12 && ch === '/') {
      out += '\\/'
    } else {
      out += ch
    }
  }
  return out + '"'
}

function unicodeEscape (ch: string, r: Rng): string {
  let out = ''
  for (let i = 0; i < ch.length; i++) {
    const hex = ch.charCodeAt(i).toString(16).padStart(4, '0')
    out += '\\u' + (r() < 0.5 ? hex : hex.toUpperCase())
  }
  return out
}

/** Most generated strings are short; the SIMD tests raise this so that most are not. */
let stringItems = 8

function randomString (r: Rng): string {
  const alphabet = ['a', 'b', ' ', '"', '\\', '/', 'ü', '日', '🌍', '\n', '\t', '\u0001', '\u001f', '\u2028', '"user":"x"', '{', '}', '[', ']', ',', ':', '\\u0075', '\ud800', '\udc00']
  let s = ''
  const n = Math.floor(r() * stringItems)
  for (let i = 0; i < n; i++) s += pick(r, alphabet)
  return s
}

function value (r: Rng, depth: number): string {
  const k = r()
  if (depth > 4 || k < 0.35) {
    const s = r()
    if (s < 0.3) return pick(r, NUMBERS)
    if (s < 0.6) return quote(r, randomString(r))
    return pick(r, ['true', 'false', 'null'])
  }
  if (k < 0.65) {
    const n = Math.floor(r() * 4)
    const items = Array.from({ length: n }, () => ws(r) + value(r, depth + 1) + ws(r))
    return '[' + (n === 0 ? ws(r) : items.join(',')) + ']'
  }
  return object(r, depth + 1)
}

function object (r: Rng, depth: number): string {
  const n = Math.floor(r() * 6)
  const members: string[] = []
  for (let i = 0; i < n; i++) {
    const key = r() < 0.7 ? pick(r, KEYS) : randomString(r)
    let v: string
    if (key === 'model' && r() < 0.7) v = quote(r, pick(r, ['fake/ok', 'openai/gpt-4o', 'm"x', randomString(r)]))
    else if (key === 'stream' && r() < 0.7) v = pick(r, ['true', 'false', '"true"', '1', 'null'])
    else if ((key === 'max_tokens' || key === 'max_completion_tokens') && r() < 0.7) v = pick(r, NUMBERS)
    else if (key === 'stream_options' && r() < 0.6) v = `{${ws(r)}"include_usage"${ws(r)}:${ws(r)}${pick(r, ['true', 'false', 'null'])}${ws(r)}}`
    else if (key === 'messages' && r() < 0.7) v = messages(r, depth)
    else v = value(r, depth)
    members.push(ws(r) + quote(r, key) + ws(r) + ':' + ws(r) + v + ws(r))
  }
  return '{' + (n === 0 ? ws(r) : members.join(',')) + '}'
}

/** A `messages` array: mostly one message, with the members the task heuristic reads, written every way. */
function messages (r: Rng, depth: number): string {
  const n = pick(r, [1, 1, 1, 0, 2, 3])
  const items = Array.from({ length: n }, () => ws(r) + (r() < 0.85 ? message(r, depth) : value(r, depth + 1)) + ws(r))
  return '[' + (n === 0 ? ws(r) : items.join(',')) + ']'
}

function message (r: Rng, depth: number): string {
  const members: string[] = []
  const n = Math.floor(r() * 5)
  for (let i = 0; i < n; i++) {
    const key = pick(r, ['role', 'content', 'content', 'role', 'name', 'Role', 'text', 'type', 'rolex'])
    let v: string
    if (key === 'role' && r() < 0.8) v = quote(r, pick(r, ['user', 'assistant', 'system', 'us"er', '', 'user ']))
    else if (key === 'content' && r() < 0.45) v = quote(r, pick(r, ['### Task:\nGenerate a title', '  ### Task: tags', 'hi', randomString(r)]))
    else if (key === 'content' && r() < 0.8) v = parts(r, depth)
    else v = value(r, depth + 2)
    members.push(ws(r) + quote(r, key) + ws(r) + ':' + ws(r) + v + ws(r))
  }
  return '{' + (n === 0 ? ws(r) : members.join(',')) + '}'
}

function parts (r: Rng, depth: number): string {
  const n = Math.floor(r() * 4)
  const items = Array.from({ length: n }, () => {
    if (r() < 0.15) return ws(r) + value(r, depth + 3) + ws(r)
    const members: string[] = []
    const m = Math.floor(r() * 4)
    for (let i = 0; i < m; i++) {
      const key = pick(r, ['type', 'text', 'text', 'type', 'image_url', 'Text'])
      const v = key === 'type' && r() < 0.8 ? quote(r, pick(r, ['text', 'image_url', 'Text'])) : key === 'text' && r() < 0.8 ? quote(r, randomString(r)) : value(r, depth + 4)
      members.push(ws(r) + quote(r, key) + ws(r) + ':' + ws(r) + v + ws(r))
    }
    return ws(r) + '{' + (m === 0 ? ws(r) : members.join(',')) + '}' + ws(r)
  })
  return '[' + (n === 0 ? ws(r) : items.join(',')) + ']'
}

function document (r: Rng): string {
  const x = r()
  if (x < 0.05) return ws(r) + value(r, 0) + ws(r) // any JSON value: mostly not an object
  return ws(r) + object(r, 0) + ws(r)
}

/** Breaks a document the ways a careless or hostile client would. */
function mutate (r: Rng, text: Buffer): Buffer {
  const b = Buffer.from(text)
  const at = Math.floor(r() * (b.length + 1))
  const m = r()
  if (m < 0.2) return b.subarray(0, at) // truncated
  if (m < 0.4) return Buffer.concat([b.subarray(0, at), b.subarray(at + 1)]) // a byte gone
  const junk = pick(r, [[0x22], [0x5c], [0x2c], [0x7d], [0x5d], [0x7b], [0x00], [0x1f], [0x20], [0x2d], [0x30], [0x2e], [0x65],
    [0xff], [0xc3], [0xe6, 0x97], [0xef, 0xbb, 0xbf], [0xed, 0xa0, 0x80], [0x80], [0x74], [0x6e, 0x75], [0x3a]])
  if (m < 0.7) return Buffer.concat([b.subarray(0, at), Buffer.from(junk), b.subarray(at)]) // bytes added
  if (at < b.length) b[at] = junk[0] // a byte replaced
  return b
}

t.test('random documents: same verdict, fields and splice as JSON.parse', async (t) => {
  const r = mulberry32(20261128)
  let accepted = 0
  for (let n = 0; n < 3000; n++) {
    const buf = Buffer.from(document(r))
    const o = oracle(buf)
    const d = disagreement(buf, undefined, undefined, o) ?? disagreement(buf, undefined, n % 2 ? 1024 : 12, o)
    if (d) { t.fail(`${d}\n  document: ${JSON.stringify(buf.toString('utf8'))}`); return }
    if (scanBody(buf)) accepted++
  }
  t.ok(accepted > 2500, `most generated documents are objects (${accepted})`)
})

t.test('mutated documents: the scanner refuses exactly what JSON.parse refuses', async (t) => {
  const r = mulberry32(7)
  let refused = 0
  for (let n = 0; n < 6000; n++) {
    let buf: Buffer = Buffer.from(document(r))
    const times = 1 + Math.floor(r() * 3)
    for (let k = 0; k < times; k++) buf = mutate(r, buf)
    const o = oracle(buf)
    const d = disagreement(buf, undefined, undefined, o) ?? disagreement(buf, undefined, 1024, o)
    if (d) { t.fail(`${d}\n  document: ${buf.toString('hex')}`); return }
    if (!scanBody(buf)) refused++
  }
  t.ok(refused > 1500, `many mutations break the document (${refused})`)
})

t.test('sliced scans agree with one-shot scans whatever the slice size', async (t) => {
  const r = mulberry32(99)
  for (let n = 0; n < 1500; n++) {
    let buf: Buffer = Buffer.from(document(r))
    if (n % 2) buf = mutate(r, buf)
    const d = disagreement(buf, 1 + Math.floor(r() * 16), n % 3 === 0 ? 1024 : undefined)
    if (d) { t.fail(`${d}\n  document: ${buf.toString('hex')}`); return }
  }
  t.pass('1500 documents in slices of 1 to 16 bytes')
})

t.test('adversarial cases, one by one', async (t) => {
  const cases: Array<[string, string | Buffer]> = [
    ['user inside message text', '{"messages":[{"role":"user","content":"{\\"user\\":\\"evil\\"}, \\"user\\": \\"x\\""}],"model":"m"}'],
    ['escaped key spelling user', '{"\\u0075ser":"spoof","model":"m"}'],
    ['escaped key spelling user, upper-case hex', '{"\\u0055ser":"not user","us\\u0065r":"is user"}'],
    ['duplicate user: last wins, all replaced', '{"user":"first","model":"a","user":"second","model":"b"}'],
    ['duplicate user of other types', '{"user":{"x":1},"user":[1,"user"],"user":7}'],
    ['user in a nested object stays', '{"metadata":{"user":"keep"},"model":"m"}'],
    ['empty object', '{}'],
    ['empty object with spaces', ' \r\n\t{ \n } \t'],
    ['whitespace everywhere', '\n{\n"model"\n:\n"m"\n,\n"user"\t:\t"u"\r\n}\n'],
    ['escapes in values', '{"model":"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83c\\udf0d","user":"\\u0000"}'],
    ['lone surrogate escapes', '{"model":"\\ud800","user":"\\udc00x"}'],
    ['numbers', '{"max_tokens":-0,"max_completion_tokens":1.5e+300,"x":[0,-0.0,1E-2,123456789012345678901234567890,1e400]}'],
    ['big integer token count', '{"max_tokens":9007199254740993}'],
    ['stream true', '{"stream":true}'],
    ['stream "true" is not true', '{"stream":"true"}'],
    ['stream duplicate: last wins', '{"stream":true,"stream":false}'],
    ['__proto__ key', '{"__proto__":{"user":"x"},"user":"y"}'],
    ['non-ASCII keys and values', '{"日本":"🌍","modèle":"x","model":"模型"}'],
    ['BOM', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"model":"m"}')])],
    ['invalid UTF-8 inside a string', Buffer.concat([Buffer.from('{"model":"a'), Buffer.from([0xff, 0xc3]), Buffer.from('b"}')])],
    ['invalid UTF-8 inside the user', Buffer.concat([Buffer.from('{"user":"a'), Buffer.from([0x80]), Buffer.from('"}')])],
    ['invalid UTF-8 between tokens', Buffer.concat([Buffer.from('{"model":"a"'), Buffer.from([0xff]), Buffer.from('}')])],
    ['UTF-8 encoded surrogate', Buffer.concat([Buffer.from('{"model":"'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('"}')])],
    ['overlong encoding', Buffer.concat([Buffer.from('{"model":"'), Buffer.from([0xc0, 0xaf]), Buffer.from('"}')])],
    ['raw control character in a string', '{"model":"a\u0001b"}'],
    ['raw DEL is fine', '{"model":"a\u007fb"}'],
    ['bad escape', '{"model":"a\\xb"}'],
    ['short unicode escape', '{"model":"\\u12"}'],
    ['trailing comma in object', '{"model":"m",}'],
    ['trailing comma in array', '{"messages":[1,]}'],
    ['leading zero', '{"max_tokens":01}'],
    ['bare dot', '{"max_tokens":1.}'],
    ['plus sign', '{"max_tokens":+1}'],
    ['hex number', '{"max_tokens":0x10}'],
    ['NaN', '{"max_tokens":NaN}'],
    ['single quotes', "{'model':'m'}"],
    ['comment', '{"model":"m"/* c */}'],
    ['two documents', '{"model":"m"}{"model":"n"}'],
    ['garbage after the object', '{"model":"m"} x'],
    ['a comma after the object', '{"model":"m"},{"model":"n"}'],
    ['a value after a comma after the object', '{"model":"m"} , 2'],
    ['a closing bracket after the object', '{"model":"m"}]'],
    ['unclosed', '{"model":"m"'],
    ['unclosed nested', '{"model":"m","x":[{]}'],
    ['mismatched close', '{"x":[}]}'],
    ['array root', '[{"model":"m"}]'],
    ['string root', '"{\\"model\\":\\"m\\"}"'],
    ['null root', 'null'],
    ['number root', '12'],
    ['empty body', ''],
    ['only spaces', '   '],
    ['truncated literal', '{"stream":tru}'],
    ['literal with tail', '{"stream":truex}'],
    ['NUL outside a string', '{"model":"m"}\u0000'],
    ['non-breaking space as whitespace', '{\u00a0"model":"m"}'],
    ['vertical tab as whitespace', '{\u000b"model":"m"}'],
    ['key without quotes', '{model:"m"}'],
    ['missing colon', '{"model" "m"}'],
    ['missing value', '{"model":}'],
  ]
  for (const [name, text] of cases) {
    const buf = Buffer.isBuffer(text) ? text : Buffer.from(text)
    const o = oracle(buf)
    t.equal(disagreement(buf, undefined, undefined, o), null, name)
    t.equal(disagreement(buf, undefined, 1024, o), null, `${name} (spliced in place)`)
    for (const budget of [1, 3, 7]) t.equal(disagreement(buf, budget, undefined, o), null, `${name} (slices of ${budget})`)
  }
})

t.test('in place: a body read with room after it gets its user without a second copy, exactly once', async (t) => {
  const text = '{"model":"m","messages":[{"role":"user","content":"a \\"user\\": inside"}]}  \n'
  const mem = Buffer.allocUnsafeSlow(text.length + 1024)
  mem.write(text)
  const raw = mem.subarray(0, text.length)
  const scan = new BodyScan(raw, 1024)
  scan.step()
  const parts = scan.body!.withUserParts('org_u1')
  t.equal(parts.length, 1, 'one buffer')
  t.equal(parts[0].buffer, mem.buffer, 'the memory the body was read into: not copied')
  t.same(JSON.parse(parts[0].toString()), { ...JSON.parse(text), user: 'org_u1' })
  t.equal(parts[0].toString().slice(-4), '"}  \n'.slice(-4), 'the whitespace after the brace moved with it')
  t.throws(() => scan.body!.withUserParts('again'), /already spliced/, 'a second splice is refused, not garbled')
  const tooLong = new BodyScan(Buffer.from(text), 8)
  tooLong.step()
  const copied = tooLong.body!.withUserParts('org_u1')
  t.equal(copied.length, 3, 'no room for the value: slices around it, copied later')
})

t.test('what is read, concretely', async (t) => {
  const body = scanBody(Buffer.from('{"user":"first","model":"a\\u0062","user":"se\\"cond","stream":true,"max_tokens":1e3,"messages":[{"role":"user"}]}'))!
  t.equal(body.string('user'), 'se"cond', 'the last duplicate, decoded')
  t.equal(body.string('model'), 'ab')
  t.equal(body.isTrue('stream'), true)
  t.equal(body.number('max_tokens'), 1000)
  t.equal(body.number('model'), undefined)
  const m = body.span('messages')!
  t.equal(body.bytes.toString('utf8', m.start, m.end), '[{"role":"user"}]')
  t.equal(body.withUser('ext').toString(), '{"user":"ext","model":"a\\u0062","user":"ext","stream":true,"max_tokens":1e3,"messages":[{"role":"user"}]}',
    'every user replaced, every other byte as the client sent it')
  t.equal(scanBody(Buffer.from(' { } '))!.withUser('x').toString(), ' { "user":"x"} ')
  t.equal(scanBody(Buffer.from('{"a" : 1.50 }'))!.withUser('x').toString(), '{"a" : 1.50 ,"user":"x"}')
  t.equal(stringAt(Buffer.from('"x"'), { start: 0, end: 3 }), 'x')
  t.equal(stringAt(Buffer.from('12'), { start: 0, end: 2 }), undefined)
})

t.test('invalid UTF-8 is repaired as toString did, and the repair is what goes upstream', async (t) => {
  const raw = Buffer.concat([Buffer.from('{"model":"a'), Buffer.from([0xff]), Buffer.from('b"}')])
  const body = scanBody(raw)!
  t.equal(body.string('model'), 'a\ufffdb')
  t.same(body.withUser('u'), Buffer.from('{"model":"a\ufffdb","user":"u"}'))
})

t.test('depth costs no stack: a hundred thousand levels, valid and invalid', async (t) => {
  // A scanner that recursed per level would overflow Node's stack at about ten thousand.
  for (const n of [5000, 100_000]) {
    const deep = Buffer.from(`{"model":"m","messages":[],"x":${'['.repeat(n)}${']'.repeat(n)}}`)
    const body = scanBody(deep)
    t.ok(body, `${n} levels accepted, as JSON.parse accepts them`)
    t.equal(body!.string('model'), 'm')
    t.equal(JSON.parse(body!.withUser('u').toString()).user, 'u')
    const objects = Buffer.from(`{"x":${'{"a":'.repeat(n)}1${'}'.repeat(n)}}`)
    t.ok(scanBody(objects), `${n} nested objects accepted`)
    t.equal(scanBody(Buffer.from(`{"x":${'['.repeat(n)}${']'.repeat(n - 1)}}`)), null, `${n} levels with one close missing: refused`)
    t.equal(scanBody(Buffer.from(`{"x":${'['.repeat(n)}${'}'.repeat(n)}}`)), null, `${n} levels closed by the wrong bracket: refused`)
  }
})

t.test('a root that is not an object is refused without reading the rest', async (t) => {
  const scan = new BodyScan(Buffer.from('[' + '1,'.repeat(1000) + '1]'))
  t.equal(scan.step(1), true, 'done at once')
  t.equal(scan.body, null)
})

t.test('the generic scanner reports the root\'s members and can stop early', async (t) => {
  const buf = Buffer.from('[1, {"a":[2]}, "x", 4]')
  const seen: string[] = []
  const s = new JsonScanner(buf, 0, buf.length, (ks, _ke, _esc, vs, ve) => { seen.push(`${ks}:${buf.toString('utf8', vs, ve)}`); return seen.length === 3 })
  t.equal(s.run(), true)
  t.equal(s.valid, true)
  t.same(seen, ['-1:1', '-1:{"a":[2]}', '-1:"x"'])
  t.equal(s.root, 0x5b)
  const scalar = new JsonScanner(Buffer.from(' 12 '), 0, 4)
  t.equal(scalar.run(), true)
  t.equal(scalar.valid, true)
  t.equal(scalar.members, 0)
  // Whether a key holds an escape, short or long (the long one read by the SIMD loop).
  const keys = Buffer.from(JSON.stringify({ plain: 1, ['\n' + 'k'.repeat(200)]: 2, ['k'.repeat(200) + '\u00e9"']: 3, ['k'.repeat(300)]: 4, ['a\tb']: 5 }))
  const escaped: boolean[] = []
  t.equal(new JsonScanner(keys, 0, keys.length, (_ks, _ke, esc) => { escaped.push(esc); return undefined }).run(), true)
  t.same(escaped, [false, true, true, false, true])
})

t.test('the SIMD loop is there, and its bytes are compiled from json-strings.wat as committed', async (t) => {
  t.ok(simdStrings(), 'WebAssembly SIMD loaded on this Node')
  const check = spawnSync(process.execPath, ['scripts/wasm.mjs', '--check'], { encoding: 'utf8' })
  t.equal(check.status, 0, check.stderr)
  // Where WebAssembly is off the scanner still works, in JavaScript.
  const jitless = spawnSync(process.execPath, ['--jitless', '--input-type=module', '-e',
    "import { simdStrings } from './dist/proxy/body/json-strings.js'; import { BodyScan } from './dist/proxy/body/json-body.js'; " +
    "const s = new BodyScan(Buffer.from(JSON.stringify({ model: 'm', messages: [{ content: 'x'.repeat(100) + '\\n\\u00e9' }] }))); s.step(); const b = s.body;" +
    "console.log(simdStrings(), b && b.string('model'))"], { encoding: 'utf8' })
  t.equal(jitless.stdout.trim(), 'false m', jitless.stderr)
})

t.test('long strings through the SIMD loop, windows of every small size: same verdict, fields and splice as JSON.parse', async (t) => {
  stringItems = 200
  t.teardown(() => { stringItems = 8; tuneStrings({}) })
  for (const window of [16, 17, 31, 64, 333, 65536]) {
    // SIMD and JavaScript scan the same 200 documents (one seed per window), in the same order:
    // they are made, and parsed by the oracle, once.
    const r = mulberry32(window)
    const docs = Array.from({ length: 200 }, (_, n) => {
      let buf: Buffer = Buffer.from(document(r))
      if (n % 2) buf = mutate(r, buf)
      return { buf, budget: 1 + Math.floor(r() * 64), room: n % 3 === 0 ? 1024 : undefined, o: oracle(buf) }
    })
    for (const simd of [true, false]) {
      tuneStrings({ window, simd })
      for (const { buf, budget, room, o } of docs) {
        const d = disagreement(buf, undefined, undefined, o) ?? disagreement(buf, budget, room, o)
        if (d) { t.fail(`window ${window}, simd ${simd}: ${d}\n  document: ${buf.toString('hex')}`); return }
      }
    }
  }
  t.pass('200 documents with long strings per window size, SIMD and JavaScript')
})

t.test('a stop byte at every offset around a window edge is found (SIMD)', async (t) => {
  t.teardown(() => tuneStrings({}))
  tuneStrings({ window: 48 })
  const stops = ['"', '\\n', '\\u00e9', '\\u00', '\\q', '\\', '\u0001', '\u001f', ' ', '\u007f', 'é', '🌍']
  let checked = 0
  for (const stop of stops) {
    for (let at = 0; at < 110; at++) {
      // The SIMD loop takes over 128 bytes into the string, and its windows of 48 bytes end
      // at 176, 224 and 272: the stop byte falls on, before and after each edge.
      const doc = Buffer.from('{"model":"' + 'a'.repeat(150 + at) + stop + 'b'.repeat(70) + '","user":"x"}')
      const d = disagreement(doc)
      if (d) { t.fail(`${JSON.stringify(stop)} at ${at}: ${d}`); return }
      checked++
    }
  }
  t.equal(checked, stops.length * 110)
})

t.test('the SIMD window never outlives a scan step: a buffer written again is read again', async (t) => {
  // As body memory is reused: the same buffer, another request's bytes.
  const buf = Buffer.from('{"model":"' + 'a'.repeat(300) + '","user":"x"}')
  t.ok(scanBody(buf), 'valid at first')
  buf[200] = 0x01 // a raw control byte now, inside the part the SIMD loop read
  t.equal(scanBody(buf), null, 'refused once it holds a control byte')
  buf[200] = 0x61
  // Two long strings: the window copied for the first holds the second too.
  const two = Buffer.from('{"model":"' + 'a'.repeat(300) + '","user":"' + 'b'.repeat(300) + '"}')
  const scan = new BodyScan(two)
  t.equal(scan.step(150), false, 'paused after the first string')
  two[two.length - 100] = 0x01
  t.equal(scan.step(), true)
  t.equal(scan.body, null, 'a step after a pause reads the bytes as they are now')
})

t.test('long strings are skipped a word at a time: every stop byte is found at every offset and alignment', async (t) => {
  t.teardown(() => tuneStrings({}))
  for (const simd of [true, false]) {
    tuneStrings({ simd })
    await t.test(simd ? 'SIMD' : 'JavaScript', async (t) => stopBytes(t))
  }
})

async function stopBytes (t: Test): Promise<void> {
  const r = mulberry32(5)
  const stops: Array<[string, Buffer]> = [['quote', Buffer.from('"')], ['escape', Buffer.from('\\n')], ['unicode escape', Buffer.from('\\u00e9')],
    ['bad escape', Buffer.from('\\q')], ['control', Buffer.from([0x01])], ['tab', Buffer.from([0x09])], ['0x1f', Buffer.from([0x1f])],
    ['0x20', Buffer.from(' ')], ['0x7f', Buffer.from([0x7f])], ['0xff', Buffer.from([0xff])], ['multi-byte', Buffer.from('é日🌍')],
    ['0x21', Buffer.from('!')], ['0x23', Buffer.from('#')], ['0x5b', Buffer.from('[')], ['0x5d', Buffer.from(']')]]
  let checked = 0
  for (const [name, stop] of stops) {
    for (let at = 0; at < 40; at++) {
      for (let shift = 0; shift < 4; shift++) {
        const filler = (n: number) => Buffer.from(Array.from({ length: n }, () => 0x41 + Math.floor(r() * 26)))
        const doc = Buffer.concat([Buffer.from('{"model":"'), filler(at), stop, filler(37 + Math.floor(r() * 5)), Buffer.from('","user":"x"}')])
        // Shift the document inside a larger allocation so that its words fall on every alignment.
        const host = Buffer.alloc(doc.length + 8, 0x22)
        doc.copy(host, shift)
        const d = disagreement(host.subarray(shift, shift + doc.length))
        if (d) { t.fail(`${name} at ${at}, shift ${shift}: ${d}`); return }
        checked++
      }
    }
  }
  t.equal(checked, stops.length * 160)
}

t.test('a single message is read for the task heuristic; a history is not parsed', async (t) => {
  const one = scanBody(Buffer.from('{"messages":[ {"role":"user","content":"### Task:\\nGenerate a title"} ],"stream":false}'))!
  t.same(one.singleMessage(), [{ role: 'user', content: '### Task:\nGenerate a title' }])
  t.equal(scanBody(Buffer.from('{"messages":[{"role":"user"},{"role":"assistant"}]}'))!.singleMessage(), null, 'two messages')
  t.equal(scanBody(Buffer.from('{"messages":[{"role":"user"} \n\t, "x"]}'))!.singleMessage(), null, 'two, with space before the comma')
  t.same(scanBody(Buffer.from('{"messages":[ "only" \r\n ]}'))!.singleMessage(), [null], 'one that is not an object, with space before the bracket')
  t.equal(scanBody(Buffer.from('{"messages":[]}'))!.singleMessage(), null, 'none')
  t.equal(scanBody(Buffer.from('{"messages":"### Task:"}'))!.singleMessage(), null, 'not an array')
  t.equal(scanBody(Buffer.from('{"model":"m"}'))!.singleMessage(), null, 'absent')
})

t.test('every byte after a backslash, and every byte in each \\u digit, is judged as JSON.parse judges it, on and around window edges', async (t) => {
  // The escape set and the hex check of json-strings.wat, byte by byte: `\v` or `\'` accepted,
  // `\f` or `\/` refused, a digit past `f` taken, or one of the four not checked, all disagree.
  // The escape starts at every offset of a 16-byte window, so a window edge cuts it everywhere,
  // and the bytes past the edge in the loop's memory (left from an earlier copy) must not count.
  t.teardown(() => tuneStrings({}))
  const escapes: Buffer[] = []
  for (let b = 0; b < 256; b++) escapes.push(Buffer.from([0x5c, b]))
  for (let at = 0; at < 4; at++) {
    for (let b = 0; b < 256; b++) {
      const digits = Buffer.from('0000')
      digits[at] = b
      escapes.push(Buffer.concat([Buffer.from('\\u'), digits]))
    }
  }
  // The same documents, in the same order, under each setting: made and parsed by the oracle once.
  const docs = escapes.flatMap((escape) => Array.from({ length: 16 }, (_, shift) => {
    const doc = Buffer.concat([Buffer.from('{"model":"' + 'a'.repeat(150 + shift)), escape, Buffer.from('b'.repeat(40) + '","user":"x"}')])
    return { escape, shift, doc, o: oracle(doc) }
  }))
  let checked = 0
  for (const [window, simd] of [[16, true], [48, true], [65536, true], [65536, false]] as const) {
    tuneStrings({ window, simd })
    for (const { escape, shift, doc, o } of docs) {
      const d = disagreement(doc, undefined, undefined, o)
      if (d) { t.fail(`window ${window}, simd ${simd}, ${JSON.stringify(escape.toString('latin1'))} at ${shift}: ${d}`); return }
      checked++
    }
  }
  t.equal(checked, 4 * escapes.length * 16)
})

t.test('a long key is reported escaped whatever its escape and wherever it falls among windows', async (t) => {
  t.teardown(() => tuneStrings({}))
  const keys = ['k'.repeat(200) + '\\u00e9', '\\u00e9' + 'k'.repeat(300), '\\n' + 'k'.repeat(300), 'k'.repeat(130) + '\\/' + 'k'.repeat(300), 'k'.repeat(300), 'k'.repeat(20) + '\\u0041']
  const doc = Buffer.from('{' + keys.map((k, n) => `"${k}":${n}`).join(',') + '}')
  t.same(Object.keys(JSON.parse(doc.toString())).length, keys.length)
  for (const [window, simd] of [[16, true], [48, true], [65536, true], [65536, false]] as const) {
    tuneStrings({ window, simd })
    const escaped: boolean[] = []
    t.equal(new JsonScanner(doc, 0, doc.length, (_ks, _ke, esc) => { escaped.push(esc); return undefined }).run(), true)
    t.same(escaped, [true, true, true, true, false, true], `window ${window}, simd ${simd}`)
  }
})

t.test('a single message right before the closing bracket, with no space, is read', async (t) => {
  t.same(scanBody(Buffer.from('{"messages":[{"role":"user","content":"hi"}]}'))!.singleMessage(), [{ role: 'user', content: 'hi' }])
  t.same(scanBody(Buffer.from('{"messages":["only"],"model":"m"}'))!.singleMessage(), [null])
  t.equal(scanBody(Buffer.from('{"messages":["a","b"]}'))!.singleMessage(), null)
})
