// A receiver for the export bench, in its own process: takes CloudEvents batches and Stripe meter
// events as fast as it can, answers at once, and counts distinct ids. GET /count answers
// {"events": n, "distinct": m}.
import { createServer } from 'node:http'

const port = Number(process.argv.find((a) => a.startsWith('--port='))?.slice(7) ?? 0)
const seen = new Set()
let events = 0
createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/count') { res.end(JSON.stringify({ events, distinct: seen.size })); return }
  if (req.method === 'POST' && req.url === '/reset') { seen.clear(); events = 0; req.resume(); res.end('{}'); return }
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8')
    if (req.url === '/v1/billing/meter_events') {
      const id = new URLSearchParams(body).get('identifier')
      events++; seen.add(id)
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"object":"billing.meter_event"}')
      return
    }
    for (const e of JSON.parse(body)) { events++; seen.add(e.id) }
    res.writeHead(202).end()
  })
}).listen(port, '127.0.0.1', function () { process.stdout.write(`listening ${this.address().port}\n`) })
