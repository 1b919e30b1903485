import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon } from './support/db.js'
import { startSidecar, TEST_KEY } from './support/sidecar.js'
import { ROOT, faultEnv, freePort, spawnSidecar } from './support/child.js'

// docs/durability.md: a client that holds a finished response has its record on disk. With group
// commit the record's line is written at the end of the turn; these kill the sidecar the moment
// the client holds the whole answer, while that turn is still running (made long by
// support/busy-turn.mjs, as a turn is under load), and look for the row after a restart.

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(11).start() })
t.teardown(async () => { await fake.close() })

// LEDGER_FLUSH_MS 5000: the row must come from the journal, not from an insert before the kill.
const env = (databaseUrl: string, dataDir: string, extra: Record<string, string> = {}) =>
  faultEnv({ org: 'mai_client_kill_answer', name: 'Kill After Answer Inc', key: TEST_KEY, databaseUrl, upstream: fake.baseUrl, dataDir }, { LOG_LEVEL: 'warn', LEDGER_FLUSH_MS: '5000', ...extra })

t.test('SIGKILL as soon as a client holds a complete Content-Length answer: after the restart its row is there, once', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const dataDir = mkdtempSync(join(tmpdir(), 'kill-answer-'))
  const port = await freePort()
  const child = spawnSidecar(env(db.url, dataDir, { BUSY_TURN_MS: '1500', NODE_OPTIONS: `--import ${join(ROOT, 'test', 'support', 'busy-turn.mjs')}` }), port)
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady()
  const res = await request(`${child.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'fake/sized', messages: [] }),
  })
  t.ok(res.headers['content-length'], 'the answer declares its length')
  const gen = String(res.headers['x-generation-id'])
  const body = await res.body.text() // complete: every declared byte arrived
  child.proc.kill('SIGKILL')
  await child.exited
  t.match(body, gen, 'the client holds the whole answer')
  // The next start need not be a process of its own (what it shows is the journal's replay): in
  // this one, about a second of CPU less than spawning one.
  const next = await startSidecar({ ...env(db.url, dataDir, { LEDGER_FLUSH_MS: '20' }), PORT: '0', HOST: '127.0.0.1' })
  t.teardown(() => next.sidecar.stop('test over'))
  const rows = await rowsSoon(() => db.sql`select outcome, cost_usd::text as cost from usage_events where generation_id = ${gen}`, 8000)
  t.same(rows, [{ outcome: 'ok', cost: fake.generations.get(gen)!.cost }], 'the generation the client saw is billed exactly once')
})
