// A second fake OpenRouter, built unlike bench/upstream.js: it reads every request body as a
// string and JSON.parses it whole, as OpenRouter must, and refuses a body without a model or
// messages. It answers exactly as bench/upstream.js does (same JSON, same stream), so the two
// harnesses differ in how they send and receive bodies, not in what comes back.
//
//   node bench/parsing-upstream.js --port=0      prints {"port":N} on stdout once listening (127.0.0.1 only)
import { createServer } from 'node:http'
import { randomBytes } from 'node:crypto'
import { completion, sendStream } from './upstream.js'

const PREFIX = randomBytes(4).toString('hex')
let counter = 0

function handle (req, res) {
  if (req.method !== 'POST' || !(req.url ?? '').includes('/chat/completions')) {
    res.writeHead(404, { 'content-type': 'application/json' })
    res.end('{"error":{"message":"not found","code":404}}')
    return
  }
  let text = ''
  req.setEncoding('utf8')
  req.on('data', (s) => { text += s })
  req.on('end', () => {
    let body
    try { body = JSON.parse(text) } catch { body = null }
    if (body === null || typeof body !== 'object' || typeof body.model !== 'string' || !Array.isArray(body.messages)) {
      res.writeHead(400, { 'content-type': 'application/json' })
      res.end('{"error":{"message":"invalid request","code":400}}')
      return
    }
    const id = `gen-p${PREFIX}-${(++counter).toString(36)}`
    if (body.stream === true) { sendStream(res, id, 20, 0); return }
    const out = completion(id)
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out), 'x-generation-id': id })
    res.end(out)
  })
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const port = Number((process.argv.find((a) => a.startsWith('--port=')) ?? '--port=0').slice(7))
  const server = createServer({ keepAliveTimeout: 120_000 }, handle)
  server.maxRequestsPerSocket = 0
  server.listen(port, '127.0.0.1', () => process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n'))
  process.on('SIGTERM', () => { server.closeAllConnections(); server.close(() => process.exit(0)) })
}
