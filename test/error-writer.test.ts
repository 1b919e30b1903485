import t, { type Test } from 'tap'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { request } from 'undici'
import { sendError } from '../src/lib/errors.js'
import { readJson, readText } from '../src/lib/read-body.js'

// The one error writer and the one small-body reader, as a client sees them: exact bytes, the
// `param` field only where a caller sets it, and bodies past their limit refused.

async function serve (t: Test, handle: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server = createServer(handle)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('an error without param keeps the three-field body; one with param carries it after code', async (t) => {
  const url = await serve(t, (req, res) => {
    req.resume()
    if (req.url === '/plain') sendError(res, 404, 'not_found_error', 'not_found', 'no such thing')
    else if (req.url === '/null') sendError(res, 402, 'insufficient_quota', 'budget_exceeded', 'Your budget is used up.', { 'retry-after': '5' }, null)
    else sendError(res, 400, 'invalid_request_error', 'invalid_parameter', 'bad limit', undefined, 'limit')
  })
  const plain = await request(`${url}/plain`)
  t.equal(plain.statusCode, 404)
  t.equal(plain.headers['content-type'], 'application/json')
  t.equal(await plain.body.text(), '{"error":{"message":"no such thing","type":"not_found_error","code":"not_found"}}')
  const refusal = await request(`${url}/null`)
  t.equal(refusal.statusCode, 402)
  t.equal(refusal.headers['retry-after'], '5')
  t.equal(await refusal.body.text(), '{"error":{"message":"Your budget is used up.","type":"insufficient_quota","code":"budget_exceeded","param":null}}')
  const named = await request(`${url}/named`)
  t.equal(await named.body.text(), '{"error":{"message":"bad limit","type":"invalid_request_error","code":"invalid_parameter","param":"limit"}}')
})

t.test('after the headers went out, the writer ends the connection instead of answering twice', async (t) => {
  const url = await serve(t, (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('partial')
    sendError(res, 500, 'api_error', 'internal_error', 'late')
  })
  const { port } = new URL(url)
  const seen = await new Promise<string>((resolve) => {
    let text = ''
    const sock = connect(Number(port), '127.0.0.1', () => sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))
    sock.on('data', (c) => { text += String(c) })
    sock.on('close', () => resolve(text))
    sock.on('error', () => {})
  })
  t.notMatch(seen, /HTTP\/1\.1 500|internal_error/, 'no second status line, no error JSON')
})

t.test('small bodies: whole text or JSON under the limit, null past it or when not JSON', async (t) => {
  const seen: unknown[] = []
  const url = await serve(t, (req, res) => {
    const read = req.url === '/text' ? readText(req, 8) : readJson(req, 16)
    read.then((v) => { seen.push(v); res.end('done') }, (err: Error) => { seen.push(err); res.end() })
  })
  const post = async (path: string, body: string): Promise<unknown> => {
    seen.length = 0
    try { await (await request(`${url}${path}`, { method: 'POST', body })).body.text() } catch { /* a refused body may end the connection */ }
    return seen[0]
  }
  t.equal(await post('/text', 'key=abcd'), 'key=abcd', 'exactly the limit is read')
  t.equal(await post('/text', 'key=abcde'), null, 'one byte past it is not')
  t.same(await post('/json', '{"limit_usd":"5"}'), null, '17 bytes past a 16-byte limit')
  t.same(await post('/json', '{"a":"5"}'), { a: '5' })
  t.equal(await post('/json', '{"a":'), null, 'not JSON')
})
