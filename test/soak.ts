// `npm run soak`: minutes of mixed load against a real sidecar process, with faults injected
// while it runs (Postgres cut and restored, SIGKILL and restart, SIGTERM and restart). At the end
// it compares what OpenRouter (the fake) served and what clients saw with the rows in Postgres,
// and prints generations served, records written, lost and duplicated. Exit 1 on any loss or
// duplicate. Loopback only; bounded by SOAK_SECONDS (default 120).
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import { FakeOpenRouter, mulberry32 } from './support/fake-openrouter.js'
import { createTestDb } from './support/db.js'
import { TEST_KEY } from './support/sidecar.js'
import { TcpRelay } from './support/tcp-relay.js'
import { freePort, spawnSidecar, type Child } from './support/child.js'

const seconds = Number(process.env.SOAK_SECONDS ?? 120)
const concurrency = Number(process.env.SOAK_CONCURRENCY ?? 16)
const rnd = mulberry32(Number(process.env.SOAK_SEED ?? 1))
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const fake = await new FakeOpenRouter(9).start()
fake.slowEventMs = 5
const db = await createTestDb()
const relay = new TcpRelay(db.port)
await relay.reserve()
await relay.open()
const dataDir = mkdtempSync(join(tmpdir(), 'soak-'))
const port = await freePort()
const env = {
  OPENROUTER_API_KEY: TEST_KEY, OPENROUTER_EXTERNAL_USER: 'mai_client_soak', ORGANIZATION_NAME: 'Soak Ltd',
  DATABASE_URL: `${relay.url}/${db.name}`, OPENROUTER_BASE_URL: fake.baseUrl, LOG_LEVEL: 'warn',
  DATA_DIR: dataDir, RECONCILE_MAX_WAIT_MS: '30000', SHUTDOWN_GRACE_MS: '5000',
}
let child: Child = spawnSidecar(env, port)
await child.waitReady()

const seen = new Set<string>()
const counts = { requests: 0, responses: 0, refused: 0, aborted: 0, errors402: 0 }
const faults: string[] = []
const recoveries: number[] = []
const deadline = Date.now() + seconds * 1000
const dispatcher = new Agent({ connections: concurrency, keepAliveTimeout: 1000 })

function scenario (): { model: string, stream: boolean, path: string, abortAfter?: number } {
  const x = rnd()
  if (x < 0.45) return { model: 'fake/ok', stream: rnd() < 0.6, path: 'chat/completions' }
  if (x < 0.55) return { model: 'fake/slow', stream: true, path: 'chat/completions', abortAfter: 20 + Math.floor(rnd() * 200) }
  if (x < 0.62) return { model: 'fake/error-mid', stream: true, path: 'chat/completions' }
  if (x < 0.69) return { model: 'fake/no-usage', stream: true, path: 'chat/completions' }
  if (x < 0.74) return { model: 'fake/error-402', stream: false, path: 'chat/completions' }
  if (x < 0.78) return { model: 'fake/garbage', stream: false, path: 'chat/completions' }
  if (x < 0.88) return { model: 'fake/embed', stream: false, path: 'embeddings' }
  return { model: 'fake/ok', stream: rnd() < 0.5, path: 'responses' }
}

async function worker (id: number): Promise<void> {
  while (Date.now() < deadline) {
    const s = scenario()
    counts.requests++
    const ac = new AbortController()
    const timer = s.abortAfter ? setTimeout(() => ac.abort(), s.abortAfter) : null
    try {
      const res = await request(`${child.url}/v1/${s.path}`, {
        method: 'POST', dispatcher, signal: ac.signal,
        headers: { 'content-type': 'application/json', 'x-openwebui-user-id': `soak-${id % 5}`, 'x-openwebui-user-name': 'Soak%20%C3%9Cser' },
        body: JSON.stringify({ model: s.model, stream: s.stream, input: 'x', messages: [{ role: 'user', content: 'hi' }] }),
      })
      const gen = res.headers['x-generation-id']
      if (typeof gen === 'string') seen.add(gen)
      if (res.statusCode === 402) counts.errors402++
      if (res.statusCode === 503) counts.refused++
      await res.body.text()
      counts.responses++
    } catch (err) {
      if (ac.signal.aborted) counts.aborted++
      else { counts.refused++; await sleep(50) } // the sidecar is restarting
    } finally {
      if (timer) clearTimeout(timer)
    }
  }
}

async function injector (): Promise<void> {
  const kinds = ['db-cut', 'sigkill', 'db-cut', 'sigterm']
  let i = 0
  while (Date.now() + 15_000 < deadline) {
    await sleep(8000 + rnd() * 7000)
    const kind = kinds[i++ % kinds.length]
    faults.push(kind)
    if (kind === 'db-cut') {
      await relay.cut()
      await sleep(2000 + rnd() * 3000)
      await relay.open()
    } else {
      const started = Date.now()
      child.proc.kill(kind === 'sigkill' ? 'SIGKILL' : 'SIGTERM')
      await child.exited
      child = spawnSidecar(env, port)
      await child.waitReady(60_000)
      recoveries.push(Date.now() - started)
    }
  }
}

const started = Date.now()
await Promise.all([injector(), ...Array.from({ length: concurrency }, (_, i) => worker(i))])
await relay.open()
// Let reconciliation and the ledger finish: every generation a client saw must have its row.
const settleBy = Date.now() + 60_000
let ids = new Set<string>()
while (Date.now() < settleBy) {
  ids = new Set((await db.sql`select generation_id from usage_events where generation_id is not null`).map((r) => r.generation_id as string))
  if ([...seen].every((g) => ids.has(g))) break
  await sleep(500)
}
await sleep(1000)
const [{ rows, withId, distinct, errors }] = await db.sql`select count(*)::int as rows, count(generation_id)::int as "withId",
  count(distinct generation_id)::int as distinct, count(*) filter (where outcome = 'upstream_error' and status = 402)::int as errors from usage_events`
// Rows OpenRouter gave no generation id for: its own errors, and requests that ended before
// any response header (client gone, upstream unreachable).
const withoutId = await db.sql`select outcome, status, count(*)::int as n from usage_events where generation_id is null group by 1, 2 order by 3 desc`
const lost = [...seen].filter((g) => !ids.has(g)).length
const duplicated = withId - distinct
const unseen = [...fake.generations.keys()].filter((g) => !seen.has(g) && !ids.has(g)).length
const summary = {
  seconds: Math.round((Date.now() - started) / 1000),
  requests: counts.requests,
  responses: counts.responses,
  clientAborts: counts.aborted,
  refusedDuringRestarts: counts.refused,
  faults: faults.length,
  faultKinds: faults,
  restartRecoveryMs: recoveries,
  generationsServed: fake.generations.size,
  generationsSeenByClients: seen.size,
  recordsWritten: rows,
  upstream402Responses: counts.errors402,
  upstream402Rows: errors,
  rowsWithoutGenerationId: withoutId.map((r) => `${r.outcome}/${r.status}: ${r.n}`),
  lost,
  duplicated,
  // Generations OpenRouter started whose id never reached the sidecar (the client hung up, or the
  // sidecar was killed, before the response headers): nothing can bill these but OpenRouter's
  // own activity export.
  generationsNeverSeenBySidecar: unseen,
}
console.log(JSON.stringify(summary, null, 2))
console.log(`soak: ${summary.generationsServed} generations served, ${rows} records written, ${lost} lost, ${duplicated} duplicated, ${faults.length} faults`)
child.proc.kill('SIGTERM')
await child.exited
await dispatcher.close()
await relay.cut()
await db.drop()
await fake.close()
process.exit(lost > 0 || duplicated > 0 ? 1 : 0)
