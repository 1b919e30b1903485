// The floor of any Node proxy: node:http in, undici Pool.stream out, bytes piped both ways,
// nothing parsed, nothing recorded. usage-proxy is measured against this.
//
//   node bench/bare-proxy.js --port=0 --upstream=http://127.0.0.1:PORT [--connections=1100]
//   prints {"port":N} on stdout once listening (127.0.0.1 only)
import { createServer } from 'node:http'
import { Pool } from 'undici'

const HOP = new Set(['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect'])

export function startBareProxy ({ port = 0, upstream, connections = 1100 }) {
  const pool = new Pool(upstream, { connections, pipelining: 1, keepAliveTimeout: 60_000 })
  const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
    const headers = {}
    for (const name in req.headers) if (!HOP.has(name)) headers[name] = req.headers[name]
    pool.stream({ method: req.method, path: req.url, headers, body: req.method === 'GET' || req.method === 'HEAD' ? null : req }, ({ statusCode, headers: h }) => {
      const out = {}
      for (const name in h) if (!HOP.has(name)) out[name] = h[name]
      res.writeHead(statusCode, out)
      return res
    }, (err) => {
      if (!err) return
      if (!res.headersSent) { res.writeHead(502, { 'content-type': 'application/json' }); res.end('{"error":{"message":"upstream failed"}}') } else res.destroy(err)
    })
  })
  server.maxRequestsPerSocket = 0
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve({ server, pool }))
  })
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
  const upstream = arg('upstream')
  if (!upstream) { process.stderr.write('usage: node bench/bare-proxy.js --upstream=http://127.0.0.1:PORT [--port=N]\n'); process.exit(2) }
  const { server, pool } = await startBareProxy({ port: Number(arg('port', '0')), upstream, connections: Number(arg('connections', '1100')) })
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
  process.on('SIGTERM', () => { server.closeAllConnections(); server.close(); void pool.destroy().then(() => process.exit(0)) })
}
