import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer, connect, type Server, type Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import { Agent, request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb } from './support/db.js'
import { startSidecar, TEST_KEY } from './support/sidecar.js'
import { faultEnv, freePort, spawnSidecar } from './support/child.js'

// SIGTERM while Postgres is silent (a network partition, a host that died: connections stay
// open and nothing answers, unlike a refused connection). The ledger's drain is given five
// seconds; a shutdown that waits for an insert that never answers hangs until the orchestrator
// SIGKILLs it. It must exit 0 in bounded time and leave the records in the journal.

/** A relay to Postgres that can go silent: bytes stop flowing both ways, no socket is closed. */
class SilentRelay {
  server: Server
  silent = false
  private readonly sockets = new Set<Socket>()
  constructor (target: number) {
    this.server = createServer((client) => {
      this.sockets.add(client)
      client.on('error', () => {})
      if (this.silent) return
      const up = connect(target, '127.0.0.1')
      this.sockets.add(up)
      up.on('error', () => {})
      client.on('data', (d) => { if (!this.silent) up.write(d) })
      up.on('data', (d) => { if (!this.silent) client.write(d) })
      const drop = () => { client.destroy(); up.destroy() }
      client.on('close', drop); up.on('close', drop)
    })
  }

  async listen (): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r))
    return (this.server.address() as AddressInfo).port
  }

  /** Back to normal for new connections; the ones that went silent are dropped. */
  speak (): void {
    this.silent = false
    for (const s of this.sockets) s.destroy()
    this.sockets.clear()
  }

  close (): void { this.speak(); this.server.close() }
}

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(17).start(); fake.slowEventMs = 5 }) // 1 s streams quiet, several on a starved machine: within the grace
t.teardown(async () => { await fake.close() })

const env = (databaseUrl: string, dataDir: string, extra: Record<string, string> = {}) =>
  faultEnv({ org: 'mai_client_silent_db', name: 'Silent DB Inc', key: TEST_KEY, databaseUrl, upstream: fake.baseUrl, dataDir }, { SHUTDOWN_GRACE_MS: '8000', ...extra })

t.test('SIGTERM while Postgres is silent: every response ends, the process exits 0 in bounded time, nothing is lost', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const relay = new SilentRelay(db.port)
  const relayPort = await relay.listen()
  t.teardown(() => relay.close())
  const dataDir = mkdtempSync(join(tmpdir(), 'silent-db-'))
  const port = await freePort()
  const url = `postgres://postgres@127.0.0.1:${relayPort}/${db.name}`
  const child = spawnSidecar(env(url, dataDir), port)
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady()
  relay.silent = true
  const agent = new Agent({ connections: 12 })
  t.teardown(() => agent.close())
  const answers = await Promise.all(Array.from({ length: 12 }, async (_, i) => {
    const res = await request(`${child.url}/v1/chat/completions`, {
      dispatcher: agent, method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: i % 3 === 0 ? 'fake/slow' : 'fake/ok', stream: i % 2 === 0, messages: [] }),
    })
    return { gen: String(res.headers['x-generation-id']), text: res.body.text() }
  }))
  const termAt = Date.now()
  child.proc.kill('SIGTERM')
  const texts = await Promise.all(answers.map((a) => a.text))
  t.ok(texts.every((x) => x.includes('"usage"')), 'every response ended, complete')
  const killer = setTimeout(() => child.proc.kill('SIGKILL'), 30_000)
  const { code, signal } = await child.exited
  clearTimeout(killer)
  const took = Date.now() - termAt
  t.same({ code, signal }, { code: 0, signal: null }, `exited 0 by itself (after ${took} ms)`)
  t.ok(took < 25_000, 'within the grace period, the drain and the pool close (and some slack)')
  // Postgres is back: the next start replays the journal (in this process: what it shows is the
  // replay, not the process, and it costs about a second of CPU less than spawning one).
  relay.speak()
  const next = await startSidecar({ ...env(url, dataDir), PORT: '0', HOST: '127.0.0.1' })
  t.teardown(() => next.sidecar.stop('test over'))
  const gens = answers.map((a) => a.gen)
  let rows: Array<{ generation_id: string }> = []
  for (let i = 0; i < 200; i++) {
    rows = await db.sql`select generation_id from usage_events where generation_id in ${db.sql(gens)}`
    if (rows.length >= gens.length) break
    await new Promise((r) => setTimeout(r, 50))
  }
  t.same(rows.map((r) => r.generation_id).sort(), [...gens].sort(), 'every generation a client saw has exactly one row')
})
