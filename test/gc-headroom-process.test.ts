import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv } from './support/sidecar.js'
import { freePort, spawnSidecar } from './support/child.js'
import { RUN } from '../src/lib/gc-headroom.js'

// main() is what turns the GC headroom on (src/lib/gc-headroom.ts): the unit tests call
// keepGcHeadroom themselves, so only the sidecar as a process shows it is wired in. The process
// runs with gc() exposed and a preload that forces a burst of full collections on SIGUSR2.

let fake: FakeOpenRouter
let db: TestDb

t.before(async () => {
  fake = await new FakeOpenRouter(8).start()
  db = await createTestDb({ migrated: true })
})
t.teardown(async () => {
  await fake?.close()
  await db?.drop()
})

t.test('the sidecar process hears a run of full collections and says it keeps room from then on', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gc-headroom-'))
  const preload = join(dir, 'burst.cjs')
  writeFileSync(preload, `process.on('SIGUSR2', () => { for (let i = 0; i < ${3 * RUN}; i++) globalThis.gc() })\n`)
  const child = spawnSidecar({ ...baseEnv(fake, db.url), LOG_LEVEL: 'info' }, await freePort(), ['--expose-gc', '--require', preload])
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady() // main() has installed the watcher by now (and the preload its handler)
  const said = () => child.logs().filter((l) => /^gc: full collections back to back/.test(l.msg))
  // The observer hears of collections a turn later: burst until it answers, for at most 10 s. A
  // burst is 3 runs, a dozen full collections of CPU in the child; the next goes only once this
  // one had 2 s to be heard (on a busy machine the line takes about a second: a burst every
  // 200 ms sent four to seven where one was heard).
  for (const until = Date.now() + 10_000; said().length === 0 && Date.now() < until;) {
    child.proc.kill('SIGUSR2')
    for (const heard = Date.now() + 2000; said().length === 0 && Date.now() < heard;) await new Promise((r) => setTimeout(r, 25))
  }
  const lines = said()
  t.equal(lines.length, 1, 'the run is logged, once')
  t.equal(lines[0]?.level, 30, 'at info')
  t.equal(lines[0]?.collections, RUN)
  t.type(lines[0]?.spanMs, 'number')
  t.type(lines[0]?.liveMb, 'number')
  t.match(lines[0]?.msg, /keeps 48 MB of room/)
  t.equal(child.proc.exitCode, null, 'still running')
})
