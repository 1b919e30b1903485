import t from 'tap'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb } from './support/db.js'
import { TEST_KEY } from './support/test-key.js'
import { CLI, MAIN, ROOT, freePort, runNode, spawnSidecar } from './support/child.js'

// README's quick start writes a .env into the checkout; `npm test` must pass with it there. This
// file puts one there (unless the developer already has one: then that one is the test) and runs
// the suite's ways of starting a process: each must behave exactly as if there were none.

const MARK = '# written by test/env-immunity.test.ts'
const dotenv = join(ROOT, '.env')

t.before(() => {
  if (existsSync(dotenv) && !readFileSync(dotenv, 'utf8').includes(MARK)) return // the developer's own
  const gen = runNode([CLI, 'gen-env', 'Acme GmbH'])
  if (gen.status !== 0) throw new Error(gen.stderr)
  writeFileSync(dotenv, [MARK, gen.stdout.replace('sk-or-v1-REPLACE_ME', 'sk-or-v1-0123456789abcdef0123456789abcdef'),
    'PORT=8787', 'DATA_DIR=./data-from-dotenv', 'LOG_LEVEL=silent', 'DATABASE_URL=postgres://nobody@127.0.0.1:9/none', ''].join('\n'))
})
t.teardown(() => {
  if (existsSync(dotenv) && readFileSync(dotenv, 'utf8').includes(MARK)) rmSync(dotenv)
})

t.test('the repository holds a quick-start .env with a PROXY_API_KEY', async (t) => {
  t.match(readFileSync(dotenv, 'utf8'), /^PROXY_API_KEY=\S+/m)
})

t.test('a sidecar process started by the tests ignores it', async (t) => {
  const fake = await new FakeOpenRouter(2).start()
  t.teardown(() => fake.close())
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const port = await freePort()
  const hadData = existsSync(join(ROOT, 'data'))
  // No PROXY_API_KEY, DATA_DIR or LOG_LEVEL given: read from the .env, each would show.
  const child = spawnSidecar({
    OPENROUTER_API_KEY: TEST_KEY, OPENROUTER_EXTERNAL_USER: 'mai_client_immune', ORGANIZATION_NAME: 'Immune Inc',
    DATABASE_URL: db.url, OPENROUTER_BASE_URL: fake.baseUrl,
  }, port)
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady()
  const res = await request(`${child.url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'fake/ok', messages: [] }),
  })
  await res.body.dump()
  t.equal(res.statusCode, 200, 'no PROXY_API_KEY taken from .env: no 401')
  t.ok(child.logs().some((l) => l.msg === 'ready'), 'logs at the default level, not LOG_LEVEL=silent from .env')
  t.notOk(existsSync(join(ROOT, 'data-from-dotenv')), 'DATA_DIR from .env not used')
  if (!hadData) t.notOk(existsSync(join(ROOT, 'data')), 'nothing written into the checkout')
})

t.test('a configuration check run by the tests ignores it', async (t) => {
  const r = runNode([MAIN])
  t.equal(r.status, 2)
  t.match(r.stderr, /ORGANIZATION_NAME is required/, 'ORGANIZATION_NAME not taken from .env')
})
