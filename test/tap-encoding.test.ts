import t from 'tap'
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib'
import { ResponseTap } from '../src/usage/tap/response-tap.js'
import { upstreamHeaders } from '../src/proxy/headers.js'

// The tap checks the response's Content-Encoding instead of trusting that `accept-encoding:
// identity` was honoured; and the one header rewrite both paths use.

const json = '{"id":"gen-enc-1","model":"m","provider":"p","choices":[{"index":0,"finish_reason":"stop","message":{"content":"hi"}}],' +
  '"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"cost":0.000123456789012345678}}'
const sse = 'data: {"id":"gen-enc-2","model":"m","choices":[{"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n' +
  'data: {"id":"gen-enc-2","model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"cost":0.5}}\n\ndata: [DONE]\n\n'

function feed (tap: ResponseTap, bytes: Buffer): void {
  for (let at = 0; at < bytes.length; at += 7) tap.write(bytes.subarray(at, at + 7)) // cut anywhere
}

t.test('gzip, deflate and br bodies are read decompressed, JSON and SSE alike', async (t) => {
  for (const [coding, pack] of [['gzip', gzipSync], ['deflate', deflateSync], ['br', brotliCompressSync], ['GZIP', gzipSync]] as const) {
    const ids: string[] = []
    const a = new ResponseTap('json', (id) => ids.push(id), coding)
    feed(a, pack(Buffer.from(json)))
    const r = a.end()
    t.same([r.generationId, r.usage?.costUsd, r.usage?.promptTokens, r.finishReason, r.malformed], ['gen-enc-1', '0.000123456789012345678', 3, 'stop', false], `${coding} json`)
    t.same(ids, ['gen-enc-1'])
    const b = new ResponseTap('sse', undefined, coding)
    feed(b, pack(Buffer.from(sse)))
    const q = b.end()
    t.same([q.generationId, q.usage?.costUsd, q.done, q.malformed], ['gen-enc-2', '0.5', true, false], `${coding} sse`)
  }
})

t.test('identity is plain; an unknown coding, a broken body or a bomb yields no usage (the record is reconciled)', async (t) => {
  const plain = new ResponseTap('json', undefined, 'identity')
  plain.write(Buffer.from(json))
  t.equal(plain.end().usage?.costUsd, '0.000123456789012345678')
  const zstd = new ResponseTap('json', undefined, 'zstd')
  zstd.write(Buffer.from('(\xb5/\xfd not really zstd'))
  t.same([zstd.end().usage, zstd.result.malformed], [null, true])
  const broken = new ResponseTap('json', undefined, 'gzip')
  broken.write(gzipSync(Buffer.from(json)).subarray(0, 20))
  t.same([broken.end().usage, broken.result.malformed], [null, true])
  const bomb = new ResponseTap('json', undefined, 'gzip')
  bomb.write(gzipSync(Buffer.alloc(64 * 1024 * 1024, 0x20)))
  t.same([bomb.end().usage, bomb.result.malformed], [null, true], 'decompression stops at the inspection bound')
})

t.test('one header rewrite: credentials, identity, hop-by-hop and overrides stay; the org key goes', async (t) => {
  const policy = { apiKey: 'sk-org', appUrl: 'https://app', appTitle: 'T', identityHeaders: new Set(['x-user-custom']) }
  const incoming = {
    host: 'sidecar', authorization: 'Bearer client', 'proxy-authorization': 'Basic x', cookie: 'a=b', 'x-api-key': 'k', expect: '100-continue',
    connection: 'keep-alive, X-Named', 'x-named': 'hop', 'keep-alive': 'timeout=5', te: 'trailers', 'x-openwebui-user-id': 'u', 'x-user-custom': 'c',
    'x-http-method-override': 'DELETE', 'x-http-method': 'PUT', 'x-method-override': 'PATCH', 'content-length': '10', 'transfer-encoding': 'chunked',
    'accept-encoding': 'gzip', 'x-session-id': 's1', 'content-type': 'multipart/form-data; boundary=b',
  }
  t.same(upstreamHeaders(incoming, policy, 'identity'), {
    'x-session-id': 's1', 'content-type': 'multipart/form-data; boundary=b', authorization: 'Bearer sk-org', 'accept-encoding': 'identity',
    'http-referer': 'https://app', 'x-title': 'T',
  })
  t.equal(upstreamHeaders(incoming, policy, 'client')['accept-encoding'], 'gzip', 'the passthrough keeps the client\'s encodings')
  t.equal(upstreamHeaders({ ...incoming, connection: 'accept-encoding' }, policy, 'client')['accept-encoding'], undefined, 'unless Connection names it')
})
