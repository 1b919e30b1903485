import t from 'tap'
import type { Test } from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FakeOpenRouter, sumDecimals, type FakeGeneration } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { startSidecar, TEST_KEY } from './support/sidecar.js'
import { ROOT, faultEnv, freePort, spawnSidecar, type Child } from './support/child.js'
import { journalLines, nothingPending, sendAs, until } from './support/crash-cycle.js'
import { runVerify } from '../src/usage/reports/verify-command.js'
import { externalUserId } from '../src/identity/external-id.js'

// docs/durability.md: no billed generation without a row. A request is journaled (an intent
// line, with the admission's estimate) before it goes upstream, so a SIGKILL at any moment leaves
// a row for it at the next start: reconciled through /generation when its generation id was
// seen, else 'interrupted' with no cost and the estimate in estimated_cost_usd.

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(21).start() })
t.teardown(async () => { await fake.close() })

const ORG = 'mai_client_intent'
// An organization budget, far from reached: admissions then estimate every request.
const env = (databaseUrl: string, dataDir: string, extra: Record<string, string> = {}) =>
  faultEnv({ org: ORG, name: 'Intent Inc', key: TEST_KEY, databaseUrl, upstream: fake.baseUrl, dataDir }, { LOG_LEVEL: 'warn', ORG_BUDGET_USD: '1000', ...extra })

interface Row { event_id: string, generation_id: string | null, external_user_id: string, outcome: string, status: number, cost: string | null, estimate: string | null, streamed: boolean }
const rowsOf = (db: TestDb) => db.sql<Row[]>`select event_id::text, generation_id, external_user_id, outcome, status, cost_usd::text as cost,
  estimated_cost_usd::text as estimate, streamed from usage_events where organization_id = ${ORG} order by created_at`
const same = (a: string | null, b: string | null) => a !== null && b !== null && sumDecimals([a]) === sumDecimals([b])

/** `ownedByTest` false: the file's teardown ends it (a later subtest may go on with it). */
async function sidecar (t: Test, db: TestDb, dataDir: string, port: number, extra: Record<string, string> = {}, ownedByTest = true): Promise<Child> {
  const child = spawnSidecar(env(db.url, dataDir, extra), port)
  ;(ownedByTest ? t : top).teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady()
  return child
}

const top = t
// The probe reads the journal on disk at each dispatch (test/support/intent-probe.mjs).
const PROBED = { NODE_OPTIONS: `--import ${join(ROOT, 'test', 'support', 'intent-probe.mjs')}` }
/**
 * The first subtest's last process runs with the probe and is left to the second, which needs
 * such a process and not a fresh one (starting one costs about a second of CPU). Run alone, or
 * after a failure, the second starts its own.
 */
let probedLeft: { db: TestDb, dataDir: string, child: Child } | null = null

async function kill (child: Child): Promise<void> {
  child.proc.kill('SIGKILL')
  await child.exited
}

/** The fake's generations for these users (it sees each as its external id). */
const gensOf = (users: Iterable<string>): FakeGeneration[] => {
  const ext = new Set([...users].map((u) => externalUserId(ORG, u)))
  return [...fake.generations.values()].filter((g) => g.user !== null && ext.has(g.user))
}

t.test('upstream paused with requests in flight, SIGKILL, upstream resumed, restart: one row per billed generation', async (t) => {
  const db = await createTestDb({ migrated: true })
  top.teardown(() => db.drop())
  const dataDir = mkdtempSync(join(tmpdir(), 'intent-paused-'))
  const port = await freePort()
  let child = await sidecar(t, db, dataDir, port)
  const run = `p${Date.now()}`
  // After the headers: OpenRouter named the generation, the body never came.
  fake.holdAt = 'body'
  const named = [false, false, false, true, true, true].map((stream, i) => ({ user: `${run}-named-${i}`, stream }))
  for (const r of named) void sendAs(child.url, r.user, r.stream)
  await until('6 answers held after their headers', () => fake.held === 6)
  await until('their generations journaled as pending', () => journalLines(dataDir).filter((l) => l.k === 'p').length === 6)
  // Before the headers: OpenRouter bills, the sidecar never learns the id (a non-stream request's
  // whole generation time).
  fake.holdAt = 'headers'
  const unnamed = [false, false, false, false, true, true, true].map((stream, i) => ({ user: `${run}-unnamed-${i}`, stream }))
  for (const r of unnamed) void sendAs(child.url, r.user, r.stream)
  await until('13 answers held', () => fake.held === 13)
  const reserved = new Map((await db.sql<Array<{ event_id: string, amount: string }>>`select event_id::text, amount_usd::text as amount from budget_reservations`).map((r) => [r.event_id, r.amount]))
  t.equal(reserved.size, 13, 'every request in flight holds its estimate')
  const intents = journalLines(dataDir).filter((l) => l.k === 'i')
  t.equal(intents.length, 13, 'every request in flight has its intent line on disk')
  t.ok(intents.every((l) => same(l.r.estimatedCostUsd ?? null, reserved.get(l.r.eventId) ?? null)), 'each intent carries the estimate its admission reserved')

  await kill(child)
  fake.release() // OpenRouter finishes (and bills) every generation the dead sidecar asked for
  const gens = gensOf([...named, ...unnamed].map((r) => r.user))
  t.equal(gens.length, 13, 'OpenRouter billed 13 generations')
  const externals = new Set(gens.map((g) => g.user!))

  child = await sidecar(t, db, dataDir, port)
  let rows: Row[] = []
  await until('13 rows, the named ones reconciled', async () => {
    rows = await rowsOf(db)
    return rows.length >= 13 && rows.filter((r) => r.generation_id !== null).every((r) => r.cost !== null)
  }, 20_000)
  t.equal(rows.length, 13, 'N requests in flight at the kill: N rows')
  for (const g of gens) {
    const mine = rows.filter((r) => r.generation_id === g.id || (r.generation_id === null && r.external_user_id === g.user))
    t.equal(mine.length, 1, `generation ${g.id} has exactly one row`)
    const r = mine[0]
    const wasNamed = named.some((n) => externalUserId(ORG, n.user) === g.user)
    t.equal(r.outcome, 'interrupted')
    t.equal(r.streamed, g.streamed)
    if (wasNamed) {
      t.equal(r.generation_id, g.id, 'its generation id was seen: the row names it')
      t.ok(same(r.cost, g.cost), 'and carries the cost /generation reports')
      t.equal(r.estimate, null, 'no estimate on a row with a cost')
    } else {
      t.equal(r.cost, null, 'never named: no cost anyone could look up')
      t.ok(same(r.estimate, reserved.get(r.event_id) ?? null), 'the estimate its admission reserved')
    }
  }
  t.ok(rows.every((r) => externals.has(r.external_user_id)), 'no row for anything OpenRouter did not bill')
  const left = await db.sql`select 1 from budget_reservations`
  t.equal(left.length, 0, 'every reservation released at the restart, not 30 minutes later')

  // usage-proxy verify lists the estimate-only rows (and still exits 0: they are not differences).
  let out = ''
  const code = await runVerify([], { DATABASE_URL: db.url }, (s) => { out += s }, () => {})
  t.equal(code, 0)
  const estimateOnly = rows.filter((r) => r.generation_id === null)
  for (const r of estimateOnly) t.match(out, new RegExp(`interrupted \\S+ event=${r.event_id} .*no generation id, cost unknown; counted at the estimate \\$${r.estimate!.replace('.', '\\.')}`), 'verify lists it with its estimate')
  t.match(out, `${estimateOnly.length} interrupted request(s) with no generation id`)
  t.match(out, `$${sumDecimals(estimateOnly.map((r) => r.estimate!))} in all`)
  t.equal(out.split('\n').filter((l) => l.startsWith('interrupted ')).length, estimateOnly.length, 'the named ones are not listed')

  // Idempotent: a second restart (nothing new in the journal) makes no row twice. This process
  // runs with the next subtest's probe (which only watches dispatches), and serves that subtest.
  await kill(child)
  child = await sidecar(t, db, dataDir, port, PROBED, false)
  await nothingPending(child.url)
  t.equal((await rowsOf(db)).length, 13, 'a restart replays nothing twice')
  probedLeft = { db, dataDir, child }
})

t.test('the intent line is on disk (written, not buffered) whenever a request is handed to the upstream pool', async (t) => {
  let left = probedLeft
  probedLeft = null
  if (left === null || left.child.proc.exitCode !== null || left.child.proc.signalCode !== null) {
    const db = await createTestDb({ migrated: true })
    t.teardown(() => db.drop())
    const dataDir = mkdtempSync(join(tmpdir(), 'intent-order-'))
    left = { db, dataDir, child: await sidecar(t, db, dataDir, await freePort(), PROBED) }
  }
  const { child } = left
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited }) // the last to use it
  const run = `o${Date.now()}`
  const codes = await Promise.all(Array.from({ length: 12 }, (_, i) => sendAs(child.url, `${run}-${i}`, i % 2 === 0)))
  t.same(codes, codes.map(() => 200))
  const mine = new Set(Array.from({ length: 12 }, (_, i) => externalUserId(ORG, `${run}-${i}`)))
  const probes = child.logs().filter((l) => l.probe === 'intent' && mine.has(l.user))
  t.equal(probes.length, 12, 'every request was seen at its dispatch')
  t.same(probes.filter((p) => p.onDisk !== true), [], 'each one\'s intent line was already on disk')
})

t.test('a request refused by admission leaves no intent, only its 402 record', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const dataDir = mkdtempSync(join(tmpdir(), 'intent-refused-'))
  const port = await freePort()
  // A budget no request fits; LEDGER_FLUSH_MS 5000: the rows must come from the journal.
  const child = await sidecar(t, db, dataDir, port, { ORG_BUDGET_USD: '0.000000000001', LEDGER_FLUSH_MS: '5000' })
  const run = `r${Date.now()}`
  const before = fake.requests.length
  const codes = await Promise.all([0, 1, 2].map((i) => sendAs(child.url, `${run}-${i}`, i === 1)))
  t.same(codes, [402, 402, 402])
  t.equal(fake.requests.slice(before).filter((r) => r.path.endsWith('/chat/completions')).length, 0, 'nothing went upstream')
  await until('the 402 records on disk', () => journalLines(dataDir).filter((l) => l.k === 'r').length === 3)
  t.equal(journalLines(dataDir).filter((l) => l.k === 'i').length, 0, 'no intent line for a refused request')
  await kill(child)
  // The next start replays the journal: in this process (what it shows is the replay, not the
  // process; about a second of CPU less than spawning one).
  const next = await startSidecar({ ...env(db.url, dataDir, { ORG_BUDGET_USD: '0.000000000001' }), PORT: '0', HOST: '127.0.0.1' })
  t.teardown(() => next.sidecar.stop('test over'))
  let rows: Row[] = []
  await until('3 rows', async () => (rows = await rowsOf(db)).length >= 3)
  await nothingPending(next.url)
  rows = await rowsOf(db)
  t.same(rows.map((r) => [r.outcome, r.status, r.cost, r.estimate]), [0, 1, 2].map(() => ['budget_exceeded', 402, null, null]), 'the 402 records as they are, no interrupted phantom')
})
