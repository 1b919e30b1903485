// The metering floor: the least any metering sidecar must do, on top of bench/bare-proxy.js.
// The bare pass-through (node:http in, undici out, the request body piped, nothing parsed), plus
// one regular expression over the answer's last bytes for its id and usage, plus one row per
// request, written in batched multi-row inserts (500 rows or 50 ms, one in flight) into a table
// with one index, in the same Postgres usage-proxy writes to. No journal, no identity, no budget,
// no metrics: usage-proxy is measured against this (issue 26's yardstick).
//
// `--with=` adds, one at a time, what the brief asks of every request on top of that floor, each
// done by the least code that keeps the promise (the sidecar's own modules where the promise is
// theirs), so a run shows what each promise costs on this machine:
//   body     the request body is held whole and `user` is set in it before it goes upstream
//            (one splice after the opening brace; usage-proxy also scans and checks it)
//   journal  the record is on disk before the request goes upstream and again before its answer
//            ends (dist/usage/ledger/journal.js: an intent line, the dispatch after its write(2),
//            a final line), and let go once its row is committed
//   ledger   the row is the ledger's: every column, the schema's indexes, the generation-id claim,
//            rollups (dist/usage/ledger/ledger.js on the migrated schema) instead of floor_rows
//
//   node bench/floor-proxy.js --port=0 --upstream=http://127.0.0.1:PORT --db=postgres://... [--with=body,journal,ledger]
//   prints {"port":N} on stdout once listening (127.0.0.1 only)
import { randomUUID } from 'node:crypto'
import { mkdtempSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import postgres from 'postgres'
import { Pool } from 'undici'
import { sampleRecord } from './sample-record.js'

// As bench/targets.js finds the project (not imported: it would bring the harness's signal handlers).
const ROOT = process.env.BENCH_PROJECT_DIR ? resolve(process.env.BENCH_PROJECT_DIR) : join(fileURLToPath(new URL('.', import.meta.url)), '..')

const HOP = new Set(['host', 'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect'])
// The answer's id, then its usage's token counts and cost (the last object of a stream, the tail of a JSON answer).
const USAGE = /"id":"([^"]+)"[^]*"usage":\{"prompt_tokens":(\d+),"completion_tokens":(\d+)[^}]*?"cost":([-\d.eE+]+)/
const BATCH = 500
const FLUSH_MS = 50

const dist = (path) => import(pathToFileURL(join(ROOT, 'dist', path)).href)
const silent = { info () {}, warn () {}, error () {}, debug () {}, child () { return silent } }

export async function startFloorProxy ({ port = 0, upstream, db, connections = 1100, with: extras = [] }) {
  const body = extras.includes('body')
  const journal = extras.includes('journal') ? new (await dist('usage/ledger/journal.js')).Journal(join(mkdtempSync(join(tmpdir(), 'floor-journal-')), 'journal'), silent) : null
  const sql = postgres(db, { max: extras.includes('ledger') ? 4 : 2, onnotice: () => {} })
  let ledger = null
  if (extras.includes('ledger')) {
    await (await dist('db/migrate.js')).migrate(sql, join(ROOT, 'sql'))
    // Its own organization: bench/run.js counts bench_org's rows against usage-proxy's answers.
    await sql`insert into organizations (id, name) values ('floor_org', 'Floor') on conflict do nothing`
    ledger = new (await dist('usage/ledger/ledger.js')).Ledger(sql, journal, silent, { batchSize: 2000, flushMs: 50, parallelBatches: 3 })
  } else {
    await sql`create table if not exists floor_rows (id bigint generated always as identity primary key, generation_id text, prompt_tokens int, completion_tokens int, cost numeric, at timestamptz not null default now())`
  }
  let seq = 0
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
      .then(() => { if (journal) for (const r of batch) journal.committed(r.eventId) })
      .catch((err) => process.stderr.write(`floor: insert failed: ${err.message}\n`))
      .finally(() => { flushing = false; if (rows.length >= BATCH) flush(); else if (rows.length && !timer) timer = setTimeout(flush, FLUSH_MS) })
  }
  const record = (tail, r) => {
    const m = USAGE.exec(tail)
    if (!m) return
    if (r) {
      Object.assign(r, { generationId: m[1], promptTokens: Number(m[2]), completionTokens: Number(m[3]), totalTokens: Number(m[2]) + Number(m[3]), costUsd: m[4] })
      if (ledger) return ledger.record(r)
      journal.append(r)
    }
    rows.push({ eventId: r?.eventId, generation_id: m[1], prompt_tokens: Number(m[2]), completion_tokens: Number(m[3]), cost: m[4] })
    if (rows.length >= BATCH) flush()
    else if (!timer) timer = setTimeout(flush, FLUSH_MS)
  }

  const pool = new Pool(upstream, { connections, pipelining: 1, keepAliveTimeout: 60_000 })
  const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
    const headers = {}
    for (const name in req.headers) if (!HOP.has(name)) headers[name] = req.headers[name]
    const r = journal || ledger ? sampleRecord(seq++, { org: 'floor_org', prefix: 'gen-floor' }) : null
    if (r) r.eventId = randomUUID()
    if (!body) return send(req, res, headers, req, r)
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const whole = Buffer.concat(chunks)
      const brace = whole.indexOf(0x7b)
      const user = Buffer.from(`"user":${JSON.stringify(r?.externalUserId ?? 'bench_org_u0')},`)
      const out = Buffer.concat([whole.subarray(0, brace + 1), user, whole.subarray(brace + 1)])
      headers['content-length'] = String(out.length)
      send(req, res, headers, out, r)
    })
  })
  const send = (req, res, headers, payload, r) => {
    if (!journal) return dispatch(req, res, headers, payload, r)
    journal.intent(r)
    journal.afterWrite(() => dispatch(req, res, headers, payload, r))
  }
  const dispatch = (req, res, headers, payload, r) => {
    let prev = null
    let last = null
    pool.dispatch({ method: req.method, path: req.url, headers, body: req.method === 'GET' || req.method === 'HEAD' ? null : payload }, {
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
        if (last) record((prev ? prev.toString('latin1', Math.max(0, prev.length - 2048)) : '') + last.toString('latin1'), r)
      },
      onError (err) {
        if (!res.headersSent) { res.writeHead(502, { 'content-type': 'application/json' }); res.end('{"error":{"message":"upstream failed"}}') } else res.destroy(err)
      },
    })
  }
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
  const extras = arg('with', '').split(',').filter(Boolean)
  for (const x of extras) if (!['body', 'journal', 'ledger'].includes(x)) { process.stderr.write(`unknown --with=${x} (body, journal, ledger)\n`); process.exit(2) }
  const { server, pool, sql } = await startFloorProxy({ port: Number(arg('port', '0')), upstream, db, connections: Number(arg('connections', '1100')), with: extras })
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')
  process.on('SIGTERM', () => { server.closeAllConnections(); server.close(); void pool.destroy().then(() => sql.end({ timeout: 2 })).then(() => process.exit(0)) })
}
