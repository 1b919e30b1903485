import t from 'tap'
import type { Test } from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FakeOpenRouter, mulberry32, sumDecimals, type FakeGeneration } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { startSidecar, TEST_KEY } from './support/sidecar.js'
import { faultEnv, freePort, spawnSidecar, type Child } from './support/child.js'
import { sendAs, until } from './support/crash-cycle.js'
import { externalUserId } from '../src/identity/external-id.js'

// docs/durability.md: no billed generation without a row, whenever the SIGKILL comes. Random
// kill cycles against a fake OpenRouter: every generation it billed has exactly one row after
// the last restart (by its generation id, or, never named, by its request's user).

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(23).start() })
t.teardown(async () => { await fake.close() })

const ORG = 'mai_client_intent_cycles'
const env = (databaseUrl: string, dataDir: string) =>
  faultEnv({ org: ORG, name: 'Intent Cycles Inc', key: TEST_KEY, databaseUrl, upstream: fake.baseUrl, dataDir }, { LOG_LEVEL: 'warn', ORG_BUDGET_USD: '1000' })

interface Row { event_id: string, generation_id: string | null, external_user_id: string, outcome: string, cost: string | null, estimate: string | null }
const rowsOf = (db: TestDb) => db.sql<Row[]>`select event_id::text, generation_id, external_user_id, outcome, cost_usd::text as cost,
  estimated_cost_usd::text as estimate from usage_events where organization_id = ${ORG}`
const same = (a: string | null, b: string | null) => a !== null && b !== null && sumDecimals([a]) === sumDecimals([b])

async function sidecar (t: Test, db: TestDb, dataDir: string, port: number): Promise<Child> {
  const child = spawnSidecar(env(db.url, dataDir), port)
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady()
  return child
}

async function kill (child: Child): Promise<void> {
  child.proc.kill('SIGKILL')
  await child.exited
}

const gensOf = (users: Iterable<string>): FakeGeneration[] => {
  const ext = new Set([...users].map((u) => externalUserId(ORG, u)))
  return [...fake.generations.values()].filter((g) => g.user !== null && ext.has(g.user))
}

t.test('random kill cycles: every billed generation has exactly one row', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const dataDir = mkdtempSync(join(tmpdir(), 'intent-cycles-'))
  const port = await freePort()
  const rng = mulberry32(2107)
  fake.slowEventMs = 5
  t.teardown(() => { fake.slowEventMs = 40 })
  const run = `c${Date.now()}`
  const users = new Set<string>()
  const CYCLES = 4
  for (let cycle = 0; cycle < CYCLES; cycle++) {
    const child = await sidecar(t, db, dataDir, port)
    // Kill once OpenRouter has received a random number of this cycle's requests (so the machine's
    // speed changes nothing), plus a random moment more: requests are then at every stage.
    const chat = (): number => fake.requests.filter((r) => r.path.endsWith('/chat/completions')).length
    const target = chat() + 5 + Math.floor(rng() * 12)
    const extraMs = Math.floor(rng() * 60)
    let i = 0
    let sending = true
    const sender = (async () => {
      while (sending) {
        for (let burst = 1 + Math.floor(rng() * 4); burst > 0; burst--) send(`${run}-${cycle}-${i++}`)
        await new Promise((r) => setTimeout(r, 3 + Math.floor(rng() * 12)))
      }
    })()
    await until('OpenRouter received this cycle\'s requests', () => chat() >= target, 30_000)
    await new Promise((r) => setTimeout(r, extraMs))
    await kill(child)
    sending = false
    await sender
    t.comment(`cycle ${cycle}: ${i} requests`)
    function send (user: string): void {
      users.add(user)
      const kind = rng()
      // Non-stream answers that take a while (generation billed, id not yet seen), quick ones,
      // slow streams (named at once), quick streams; some clients leave early.
      const model = kind < 0.3 ? 'fake/slow-complete' : kind < 0.5 ? 'fake/slow' : 'fake/ok'
      const stream = model === 'fake/slow' || (model === 'fake/ok' && rng() < 0.5)
      if (rng() < 0.15) {
        const ac = new AbortController()
        setTimeout(() => ac.abort(), Math.floor(rng() * 30))
        void fetch(`${child.url}/v1/chat/completions`, { method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, stream, user, messages: [{ role: 'user', content: 'x' }] }) }).then((r) => r.text()).catch(() => {})
      } else {
        void sendAs(child.url, user, stream, model)
      }
    }
  }
  await until('the fake finished what the dead sidecars asked for', () => fake.answering === 0)
  const gens = gensOf(users)
  // The last start replays what the kills left: in this process (what it shows is the replay, not
  // the process; about a second of CPU less than spawning one).
  const last = await startSidecar({ ...env(db.url, dataDir), PORT: '0', HOST: '127.0.0.1' })
  t.teardown(() => last.sidecar.stop('test over'))
  let rows: Row[] = []
  const matched = (): number => gens.filter((g) => rows.filter((r) => r.generation_id === g.id || (r.generation_id === null && r.external_user_id === g.user)).length === 1).length
  await until('a row for every billed generation', async () => {
    rows = await rowsOf(db)
    return matched() === gens.length && rows.filter((r) => r.generation_id !== null).every((r) => r.cost !== null || r.outcome !== 'interrupted')
  }, 30_000).catch(() => {})
  const externals = new Set(gens.map((g) => g.user!))
  const neverSent = rows.filter((r) => !externals.has(r.external_user_id))
  t.comment(`${CYCLES} kill cycles: ${gens.length} generations billed, ${rows.length} rows (${rows.filter((r) => r.estimate !== null).length} estimate only, ${neverSent.length} for requests the kill stopped between the intent and OpenRouter)`)
  t.ok(gens.length > 20, 'enough generations to mean something')
  t.equal(matched(), gens.length, 'billed generations == rows that stand for them: each has exactly one')
  t.equal(new Set(rows.map((r) => r.external_user_id)).size, rows.length, 'no request has two rows')
  const known = new Set(gens.map((g) => g.id))
  t.ok(rows.every((r) => r.generation_id === null || known.has(r.generation_id)), 'no row names a generation that does not exist')
  t.ok(neverSent.every((r) => r.outcome === 'interrupted' && r.cost === null && r.generation_id === null), 'a request cut before OpenRouter saw it costs nothing on the bill (its estimate only holds budget)')
  const costed = gens.map((g) => [g, rows.find((x) => x.generation_id === g.id)] as const).filter(([, r]) => r?.cost != null)
  t.ok(costed.length > 0 && costed.every(([g, r]) => same(r!.cost, g.cost)), `each of the ${costed.length} rows with a cost has what OpenRouter charged`)
})
