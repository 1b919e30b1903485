import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { TEST_KEY } from './support/sidecar.js'
import { MAIN, freePort, spawnNode } from './support/child.js'
import { withEnvFile } from '../src/config/env-file.js'

// The README's promise: on a machine without Postgres, `npm start` with a .env serves, on an
// embedded database (PGlite) under DATA_DIR, and says how to query it with psql.

t.test('.env in the working directory is read; the real environment wins', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'envfile-'))
  writeFileSync(join(dir, '.env'), '# comment\nORGANIZATION_NAME="Müller & Söhne"\nPORT=1234\n')
  const env = withEnvFile({ PORT: '9999' }, join(dir, '.env'))
  t.equal(env.ORGANIZATION_NAME, 'Müller & Söhne')
  t.equal(env.PORT, '9999')
  t.same(withEnvFile({ A: '1' }, join(dir, 'missing.env')), { A: '1' })
})

t.test('no DATABASE_URL: boots on the embedded database, records usage there, prints the psql command', async (t) => {
  const fake = await new FakeOpenRouter(5).start()
  t.teardown(() => fake.close())
  const dir = mkdtempSync(join(tmpdir(), 'embedded-'))
  const port = await freePort()
  const dbPort = await freePort()
  writeFileSync(join(dir, '.env'), [
    `OPENROUTER_API_KEY=${TEST_KEY}`, 'OPENROUTER_EXTERNAL_USER=mai_client_embedded', 'ORGANIZATION_NAME=Embedded Org',
    `OPENROUTER_BASE_URL=${fake.baseUrl}`, `PORT=${port}`, 'HOST=127.0.0.1', `EMBEDDED_DB_PORT=${dbPort}`, 'LEDGER_FLUSH_MS=10',
  ].join('\n'))
  const proc = spawnNode([MAIN], {}, dir)
  let out = ''
  proc.stdout!.on('data', (c) => { out += c })
  proc.stderr!.on('data', (c) => { out += c })
  const exited = new Promise((r) => proc.once('exit', r))
  t.teardown(async () => { proc.kill('SIGTERM'); await exited })
  let ready = false
  for (let i = 0; i < 600 && !ready; i++) {
    try { const r = await request(`http://127.0.0.1:${port}/readyz`); await r.body.dump(); ready = r.statusCode === 200 } catch {}
    if (!ready) await new Promise((r) => setTimeout(r, 100))
  }
  t.ok(ready, 'ready on the embedded database')
  t.match(out, /"level":40,.*"msg":"the embedded database is for trying usage-proxy out.*In production set DATABASE_URL/, 'says plainly it is for trying out, and what to use instead')
  t.match(out, new RegExp(`psql \\\\"postgresql://postgres@127.0.0.1:${dbPort}/postgres`), 'tells the operator how to query it')
  const res = await request(`http://127.0.0.1:${port}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-openwebui-user-id': 'e-1' }, body: JSON.stringify({ model: 'fake/ok', messages: [] }),
  })
  const gen = (await res.body.json() as { id: string }).id
  const sql = postgres(`postgres://postgres@127.0.0.1:${dbPort}/postgres`, { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 1 }))
  let rows: any[] = []
  for (let i = 0; i < 200 && rows.length === 0; i++) {
    rows = await sql`select cost_usd::text as cost, billed_cost_usd::text as billed from usage_events where generation_id = ${gen}`
    if (rows.length === 0) await new Promise((r) => setTimeout(r, 50))
  }
  t.equal(rows[0]?.cost, fake.generations.get(gen)!.cost, 'the same exact row as on a real server')
  const [org] = await sql`select name from organizations`
  t.equal(org.name, 'Embedded Org')
  const views = await sql`select * from spend_per_user_month`
  t.equal(views.length, 1, 'billing views work there too')
})
