import t from 'tap'
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { randomUUID } from 'node:crypto'
import { Agent, request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { TEST_KEY } from './support/test-key.js'
import { TcpRelay } from './support/tcp-relay.js'
import { faultEnv, freePort, ROOT, runNodeAsync, spawnSidecar, type Child } from './support/child.js'
import { runLoad } from './support/load.js'
import { createLogger } from '../src/lib/log.js'
import { Journal } from '../src/usage/ledger/journal.js'

// Fault tests, bounded in time, loopback only: the sidecar runs as a real process so that a cut
// database connection, SIGKILL and SIGTERM act on it as they would in production.

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(3).start() })
t.teardown(async () => { await fake.close() })

const env = (databaseUrl: string, dataDir: string, extra: Record<string, string> = {}) =>
  faultEnv({ org: 'mai_client_faults', name: 'Faults Inc', key: TEST_KEY, databaseUrl, upstream: fake.baseUrl, dataDir }, extra)

async function until (cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (!(await cond())) {
    if (Date.now() > deadline) return false
    await new Promise((r) => setTimeout(r, 25))
  }
  return true
}

async function rowsSettled (db: TestDb, want: (n: number) => boolean, timeoutMs = 30_000): Promise<number> {
  const deadline = Date.now() + timeoutMs
  let n = 0
  while (Date.now() < deadline) {
    n = (await db.sql`select count(*)::int as n from usage_events`)[0].n
    if (want(n)) return n
    await new Promise((r) => setTimeout(r, 100))
  }
  return n
}

/** A sidecar whose Postgres is behind a relay a test can cut: its database, relay, port and journal. */
interface Relayed { db: TestDb, relay: TcpRelay, dataDir: string, port: number, child: Child, release: () => Promise<void> }

async function relayedSidecar (prefix: string, extra: Record<string, string> = {}): Promise<Relayed> {
  const db = await createTestDb({ migrated: true })
  const relay = new TcpRelay(db.port)
  await relay.reserve()
  await relay.open()
  const dataDir = mkdtempSync(join(tmpdir(), prefix))
  const port = await freePort()
  const child = spawnSidecar(env(`${relay.url}/${db.name}`, dataDir, extra), port)
  let released: Promise<void> | null = null
  const r: Relayed = {
    db, relay, dataDir, port, child,
    // Its last process, the relay, the database: once, by the subtest that ends with it, or by the
    // file's teardown (so that a later subtest may go on with it).
    release: () => (released ??= (async () => { r.child.proc.kill('SIGKILL'); await r.child.exited; await r.relay.cut(); await r.db.drop() })()),
  }
  t.teardown(() => r.release())
  await child.waitReady()
  return r
}

/**
 * The process a subtest leaves running for the next one, on the same database, journal and
 * relay: starting a sidecar costs about a second of CPU (and a database a copy of the template),
 * and what these subtests check does not need either fresh. Each subtest that restarts it starts
 * the next process with the settings the next subtest needs, and leaves it only once it passed
 * its own checks; a subtest that finds none alive (run alone, or the one before failed) starts its
 * own. The relay, open again, only forwards bytes there.
 */
let relayedLeft: Relayed | null = null
const take = (left: Relayed | null): Relayed | null => (left !== null && left.child.proc.exitCode === null && left.child.proc.signalCode === null ? left : null)

t.test('Postgres cut three times under load: proxying goes on, rows == generations, none duplicated', async (t) => {
  const relayed = await relayedSidecar('faults-')
  const { db, relay, child } = relayed
  const before = new Set(fake.generations.keys())
  const reopenedAt: number[] = []
  // Each outage is met by the ledger: a cut lasts until an insert failed, and the next cut waits
  // until writes resumed. Partial batches go at most every LEDGER_FLUSH_MS, so a short cut could
  // otherwise fall between two inserts, or a reopening between two retries, and test nothing.
  const logged = (msg: string) => child.logs().filter((l) => l.msg === msg).length
  const FAILED = 'ledger: insert failed, will retry'
  const RESUMED = 'ledger: postgres writes resumed'
  // One outage step after the other, in the order the load reached them.
  let steps: Promise<unknown> = Promise.resolve()
  const step = (f: () => Promise<unknown>) => { steps = steps.then(f); return steps }
  // 150 requests, 8 at a time: each outage spans 25 of them (and, by the steps above, at least
  // one failed insert and the resumption), with requests in flight at every cut and reopening.
  const load = await runLoad({
    url: () => child.url,
    total: 150,
    concurrency: 8,
    after: async (done) => {
      if (done === 25 || done === 70 || done === 115) {
        await step(async () => { const before = logged(FAILED); await relay.cut(); await until(() => logged(FAILED) > before, 10_000) })
      }
      if (done === 50 || done === 95 || done === 140) {
        await step(async () => {
          const before = logged(RESUMED)
          await relay.open()
          reopenedAt.push(Date.now())
          await until(() => logged(RESUMED) > before, 10_000)
        })
      }
    },
  })
  t.equal(load.failed, 0, 'no client request failed while Postgres was away')
  t.equal(load.statuses.get(200), 150)
  const served = [...fake.generations.values()].filter((g) => !before.has(g.id))
  t.equal(served.length, 150)
  const rows = await rowsSettled(db, (n) => n >= served.length)
  t.equal(rows, served.length, 'rows == generations served')
  const [{ distinct, total }] = await db.sql`select count(distinct generation_id)::int as distinct, sum(cost_usd)::text as total from usage_events`
  t.equal(distinct, rows, 'no duplicates')
  t.equal(total.replace(/\.?0+$/, ''), sumDecimals(served.map((g) => g.cost)), 'total cost exact')
  t.equal(child.proc.exitCode, null, 'the sidecar survived every cut')
  if (child.proc.exitCode !== null) t.comment(`why it exited: ${JSON.stringify(child.logs().filter((l) => l.level >= 50))}`)
  const resumed = child.logs().filter((l) => l.msg === 'ledger: postgres writes resumed').map((l) => Date.parse(l.time))
  const recovery = reopenedAt.map((at) => Math.min(...resumed.filter((r) => r >= at)) - at).filter(Number.isFinite)
  t.equal(resumed.length, 3, 'writes resumed after each outage')
  t.comment(`faults: 3 cuts, 150 requests, 0 lost, 0 duplicated; recovery after reconnect (ms): ${recovery.join(', ')}`)
  const guarded = child.logs().filter((l) => /dropped mid-write/.test(l.msg)).length
  t.comment(`postgres.js socket races caught by the guard: ${guarded}`)
  relayedLeft = relayed // Postgres reachable again, every row written: the next subtest goes on with it
})

t.test('a user seen only while Postgres is down, then SIGKILL: after the restart their mapping is there with their usage', async (t) => {
  // The previous subtest's process, else a fresh one: its users are others (`load-user-*`), so what
  // follows reads the offline user's rows only.
  const r = take(relayedLeft) ?? await relayedSidecar('mapping-')
  relayedLeft = null
  const { db, relay, dataDir, port } = r
  let child = r.child
  await relay.cut()
  const res = await request(`${child.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': 'offline-user', 'x-openwebui-user-name': 'Off%20Line', 'x-openwebui-user-email': 'off@example.com', 'x-openwebui-user-role': 'user' },
    body: JSON.stringify({ model: 'fake/ok', messages: [] }),
  })
  const gen = String(res.headers['x-generation-id'])
  await res.body.text()
  const journal = join(dataDir, 'journal')
  const journaled = () => readdirSync(journal).some((f) => readFileSync(join(journal, f), 'utf8').split('\n').some((l) => l.startsWith('{"k":"r"') && l.includes(gen)))
  t.ok(await until(journaled, 10_000), 'the final record is in the journal')
  child.proc.kill('SIGKILL')
  await child.exited
  await relay.open()
  // The next subtest kills this process under load with rows still batched: LEDGER_FLUSH_MS 400.
  r.child = child = spawnSidecar(env(`${relay.url}/${db.name}`, dataDir, { LEDGER_FLUSH_MS: '400' }), port)
  await child.waitReady()
  const [usage] = await rowsSoon(() => db.sql`select user_id from usage_events where generation_id = ${gen}`)
  t.same(usage, { user_id: 'offline-user' }, 'the usage was replayed')
  const maps = await rowsSoon(() => db.sql`select user_id, user_name, user_email, user_role from user_mappings where user_id = 'offline-user'`)
  t.same(maps, [{ user_id: 'offline-user', user_name: 'Off Line', user_email: 'off@example.com', user_role: 'user' }], 'and so was the mapping')
  relayedLeft = r
})

t.test('SIGKILL under load, then restart: every generation a client saw is billed exactly once', async (t) => {
  // The previous subtest's process (LEDGER_FLUSH_MS 400), else a fresh one: the rows it wrote are
  // named and ok, counted in `earlier` and apart from this subtest's.
  const r = take(relayedLeft) ?? await relayedSidecar('kill-', { LEDGER_FLUSH_MS: '400' })
  relayedLeft = null
  const { db, relay, dataDir, port } = r
  let child = r.child
  const earlier = (await db.sql`select count(*)::int as n from usage_events`)[0].n
  const before = new Set(fake.generations.keys())
  let killedAt = -1
  let inFlight: string[] = []
  const seen = new Set<string>()
  // Even indices are streamed: 18, 58, 98, ... are 8-second streams, so one is mid-stream at the kill.
  const slowStreams = () => [...fake.generations.values()].filter((g) => !before.has(g.id) && g.model === 'fake/slow' && g.streamed && g.completedAt === null).map((g) => g.id)
  // 120 requests, the kill after 60: some rows written, some still in the journal (LEDGER_FLUSH_MS
  // 400), a long stream cut, the rest refused; then 20 on the restarted process.
  const first = await runLoad({
    url: () => child.url,
    total: 120,
    concurrency: 8,
    model: (i) => (i % 40 === 18 ? 'fake/slow' : 'fake/ok'),
    after: async (done) => {
      if (done < 60 || killedAt >= 0) return
      killedAt = done
      await until(() => slowStreams().length > 0, 20_000)
      inFlight = slowStreams()
      child.proc.kill('SIGKILL')
    },
  })
  t.ok(inFlight.length >= 1, `a long stream was in flight at the kill (${inFlight.length})`)
  for (const g of first.seen) seen.add(g)
  await child.exited
  const rowsBeforeRestart = (await db.sql`select count(*)::int as n from usage_events`)[0].n - earlier
  // The next subtest stops this process with SIGTERM past a grace period of 300 ms.
  r.child = child = spawnSidecar(env(`${relay.url}/${db.name}`, dataDir, { SHUTDOWN_GRACE_MS: '300' }), port)
  await child.waitReady()
  const second = await runLoad({ url: () => child.url, total: 20, concurrency: 8 })
  for (const g of second.seen) seen.add(g)
  // Wait for the generations the clients saw, not for a count: a generation no client saw (cut
  // by the kill before its first byte) has a row too, and may land before a seen one that is
  // still being reconciled.
  let ids = new Set<string>()
  let missing: string[] = [...seen]
  for (const deadline = Date.now() + 30_000; missing.length > 0 && Date.now() < deadline;) {
    ids = new Set((await db.sql`select generation_id from usage_events`).map((r) => r.generation_id))
    missing = [...seen].filter((g) => !ids.has(g))
    if (missing.length > 0) await new Promise((r) => setTimeout(r, 100))
  }
  const rows = (await db.sql`select count(*)::int as n from usage_events`)[0].n - earlier
  t.same(missing, [], 'every generation a client saw has its row')
  // A request the kill cut before its generation was named is a row with no generation id
  // ('interrupted', its estimate only): every other row names a generation, once.
  const [{ distinct, named }] = await db.sql`select count(distinct generation_id)::int as distinct, count(generation_id)::int as named from usage_events`
  t.equal(distinct, named, 'no duplicates')
  const unnamed = await db.sql`select outcome from usage_events where generation_id is null`
  t.ok(unnamed.every((r) => r.outcome === 'interrupted'), 'a row without a generation id is one the kill interrupted')
  const created = [...fake.generations.values()].filter((g) => !before.has(g.id)).length
  const replayed = child.logs().find((l) => l.msg === 'journal replayed')
  t.ok(replayed, 'the restart replayed the journal')
  t.ok(rowsBeforeRestart < rows, 'rows written before the kill were only part of them')
  for (const id of inFlight) {
    const [row] = await rowsSoon(() => db.sql`select outcome, usage_source, cost_usd::text as cost from usage_events where generation_id = ${id}`)
    t.same(row, { outcome: 'interrupted', usage_source: 'generation', cost: fake.generations.get(id)!.cost }, 'the stream cut by the kill is billed as OpenRouter billed it')
  }
  t.comment(`sigkill: ${first.ok + second.ok} responses, ${first.failed} cut by the kill, generations upstream ${created}, seen by clients ${seen.size}, rows ${rows} (${rowsBeforeRestart} before restart), replayed ${JSON.stringify(replayed)}`)
  relayedLeft = r
})

t.test('SIGTERM past the grace period: the cut stream is recorded as interrupted and reconciled at the next start', async (t) => {
  // The previous subtest's restarted process (SHUTDOWN_GRACE_MS 300), else a fresh one.
  const r = take(relayedLeft) ?? await relayedSidecar('grace-', { SHUTDOWN_GRACE_MS: '300' })
  relayedLeft = null
  const { db, relay, dataDir, port } = r
  let child = r.child
  const res = await request(`${child.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'fake/slow', stream: true, messages: [] }),
  })
  const gen = String(res.headers['x-generation-id'])
  res.body.on('error', () => {})
  child.proc.kill('SIGTERM')
  t.equal((await child.exited).code, 0, 'exits 0 after the grace period')
  r.child = child = spawnSidecar(env(`${relay.url}/${db.name}`, dataDir), port)
  await child.waitReady()
  let rows: any[] = []
  for (let i = 0; i < 200 && rows.length === 0; i++) {
    rows = await db.sql`select outcome, usage_source, cost_usd::text as cost from usage_events where generation_id = ${gen}`
    if (rows.length === 0) await new Promise((r) => setTimeout(r, 50))
  }
  t.same(rows, [{ outcome: 'interrupted', usage_source: 'generation', cost: fake.generations.get(gen)!.cost }])
  relayedLeft = r // the next subtest stops this process with SIGTERM
})

t.test('SIGTERM: stops accepting, lets the stream in flight finish, flushes, exits 0', async (t) => {
  // The previous subtest's restarted process (its grace period the default 30 s), else a fresh one
  // with 20 s: a few seconds of stream either way.
  const left = take(relayedLeft)
  relayedLeft = null
  const db = left?.db ?? await createTestDb({ migrated: true })
  // A process left by the previous subtest goes with its relay and database at the file's end.
  if (left === null) t.teardown(() => db.drop())
  fake.slowEventMs = 10
  t.teardown(() => { fake.slowEventMs = 40 })
  const child = left?.child ?? spawnSidecar(env(db.url, mkdtempSync(join(tmpdir(), 'term-')), { SHUTDOWN_GRACE_MS: '20000' }), await freePort())
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady()
  const res = await request(`${child.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'fake/slow', stream: true, messages: [] }),
  })
  const gen = String(res.headers['x-generation-id'])
  child.proc.kill('SIGTERM')
  const refused = await until(async () => {
    const fresh = new Agent() // a new connection, not a kept-alive one
    try { await (await request(`${child.url}/readyz`, { dispatcher: fresh })).body.dump(); return false } catch { return true } finally { await fresh.close() }
  }, 10_000)
  t.ok(refused, 'no new connections after SIGTERM')
  const text = await res.body.text()
  t.match(text, /data: \[DONE\]/, 'the stream in flight finished')
  const { code } = await child.exited
  t.equal(code, 0)
  const rows = await db.sql`select outcome, usage_source from usage_events where generation_id = ${gen}`
  t.same(rows.map((r) => [r.outcome, r.usage_source]), [['ok', 'inline']], 'its row was flushed before exit')
})

t.test('a fatal error in the turn a record was accepted: process.exit writes the buffered journal line first', async (t) => {
  // Group commit buffers a record's line until the end of its event-loop turn. The crash guard
  // exits in that same turn; the exit hook must write the line, or the record is gone.
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const dataDir = mkdtempSync(join(tmpdir(), 'exit-'))
  const eventId = randomUUID()
  const rec = {
    eventId, generationId: `gen-exit-${eventId}`, organizationId: 'mai_client_faults', userId: null, externalUserId: 'mai_client_faults',
    endpoint: 'chat/completions', model: 'm', servedModel: 'm', provider: 'p', streamed: false, status: 200, outcome: 'ok',
    finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: 1, completionTokens: 1, totalTokens: 2,
    cachedTokens: 0, reasoningTokens: 0, costUsd: '0.000001', upstreamCostUsd: null, isByok: false,
    markupPercent: '0', latencyMs: 1, ttfbMs: 1, chatId: null, kind: 'api', messageId: null, createdAt: new Date().toISOString(),
  }
  const dist = (f: string) => JSON.stringify(pathToFileURL(join(ROOT, 'dist', f)).href)
  const script = `
    import { start } from ${dist('main.js')}
    import { installCrashGuard } from ${dist('lib/crash-guard.js')}
    const sidecar = await start(${JSON.stringify({ ...env(db.url, dataDir), PORT: '0', HOST: '127.0.0.1' })})
    installCrashGuard(sidecar.log)
    await sidecar.ready
    setTimeout(() => {
      sidecar.ledger().record(${JSON.stringify(rec)})
      throw new Error('a bug, in the turn that accepted the record')
    }, 0)
  `
  const r = await runNodeAsync(['--input-type=module', '-e', script], {}, 60_000)
  t.equal(r.status, 1, 'the crash guard exited 1')
  t.match(r.stdout, /uncaught exception; exiting/)
  const replay = new Journal(join(dataDir, 'journal'), createLogger('silent')).replay()
  t.same(replay.finals.map((f) => f.eventId), [eventId], 'the record is in the journal, for the next start to replay')
})
