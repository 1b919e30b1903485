// The metering floor: the least any metering sidecar must do, on top of bench/bare-proxy.js.
// The bare pass-through (node:http in, undici out, the request body piped, nothing parsed), plus
// one regular expression over the answer's last bytes for its id and usage, plus one row per
// request, written in batched multi-row inserts (500 rows or 50 ms, one in flight) into a table
// with one index, in the same Postgres usage-proxy writes to. No journal, no identity, no budget,
// no metrics: usage-proxy is measured against this (issue 26's yardstick).
//
//   node bench/floor-proxy.js --port=0 --upstream=http://127.0.0.1:PORT --db=postgres://...
//   prints {"port":N} on stdout once listening (127.0.0.1 only)
import { createServer } from 'node:http'
import postgres from 'postgres'
import { Pool } from 'undici'

const HOP = new Set(['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect'])
// The answer's id, then its usage's token counts and cost (the last object of a stream, the tail of a JSON answer).
const USAGE = /"id":"([^"]+)"[^]*"usage":\{"prompt_tokens":(\d+),"completion_tokens":(\d+)[^}]*?"cost":([-\d.eE+]+)/
const BATCH = 500
const FLUSH_MS = 50

export async function startFloorProxy ({ port = 0, upstream, db, connections = 1100 }) {
  const sql = postgres(db, { max: 2, onnotice: () => {} })
  await sql`create table if not exists floor_rows (id bigint generated always as identity primary key, generation_id text, prompt_tokens int, completion_tokens int, cost numeric, at timestamptz not null default now())`
  let rows = []
  let flushing = false
  let timer = null
  const flush = () => {
    timer = null
    if (flushing || rows.length === 0) return
    const batch = rows
    rows = []
    flushing = true
    sql`insert into floor_rows ${sql(batch, 'generation_id', 'prompt_tokens', 'completion_tokens', 'cost')}`
      .catch((err) => process.stderr.write(`floor: insert failed: ${err.message}\n`))
      .finally(() => { flushing = false; if (rows.length >= BATCH) flush(); else if (rows.length && !timer) timer = setTimeout(flush, FLUSH_MS) })
  }
  const record = (tail) => {
    const m = USAGE.exec(tail)
    if (!m) return
    rows.push({ generation_id: m[1], prompt_tokens: Number(m[2]), completion_tokens: Number(m[3]), cost: m[4] })
    if (rows.length >= BATCH) flush()
    else if (!timer) timer = setTimeout(flush, FLUSH_MS)
  }

  const pool = new Pool(upstream, { connections, pipelining: 1, keepAliveTimeout: 60_000 })
  const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
    const headers = {}
    for (const name in req.headers) if (!HOP.has(name)) headers[name] = req.headers[name]
    let prev = null
    let last = null
    pool.dispatch({ method: req.method, path: req.url, headers, body: req.method === 'GET' || req.method === 'HEAD' ? null : req }, {
      onConnect () {},
      onHeaders (statusCode, raw, resume) {
        const out = []
        for (let i = 0; i < raw.length; i += 2) if (!HOP.has(raw[i].toString('latin1').toLowerCase())) out.push(raw[i].toString('latin1'), raw[i + 1].toString('latin1'))
        res.writeHead(statusCode, out)
        res.on('drain', resume)
        return true
      },
      onData (chunk) { prev = last; last = chunk; return res.write(chunk) },
      onComplete () {
        res.end()
        if (last) record((prev ? prev.toString('latin1', Math.max(0, prev.length - 2048)) : '') + last.toString('latin1'))
      },
      onError (err) {
        if (!res.headersSent) { res.writeHead(502, { 'content-type': 'application/json' }); res.end('{"error":{"message":"upstream failed"}}') } else res.destroy(err)
      },
    })
  })
  server.maxRequestsPerSocket = 0
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve({ server, pool, sql }))
  })
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
  const upstream = arg('upstream')
  const db = arg('db')
  if (!upstream || !db) { process.stderr.write('usage: node bench/floor-proxy.js --upstream=http://127.0.0.1:PORT --db=URL [--port=N]\n'); process.exit(2) }
  const { server, pool, sql } = await startFloorProxy({ port: Number(arg('port', '0')), upstream, db, connections: Number(arg('connections', '1100')) })
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
  process.on('SIGTERM', () => { server.closeAllConnections(); server.close(); void pool.destroy().then(() => sql.end({ timeout: 2 })).then(() => process.exit(0)) })
}
