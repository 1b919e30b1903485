import t from 'tap'
import { execFile, spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseEnv } from 'node:util'
import postgres from 'postgres'
import { request } from 'undici'
import { envSchema } from '../src/config/config.js'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { TEST_KEY } from './support/test-key.js'
import { WASM_BASELINE_ONLY } from './support/wasm-flags.js'
import { CLI, MAIN, childEnv, cleanCwd, freePort, spawnNode } from './support/child.js'

// README's configuration table is the operator's reference: it must name exactly the variables
// the schema knows, with the same defaults. Its quick start runs here as written (below).

const readme = readFileSync('README.md', 'utf8')
const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 5))
const rows = [...section.matchAll(/^\| `([A-Z_]+)` \| ([^|]+) \|/gm)].map((m) => ({ name: m[1], def: m[2].trim() }))

t.test('the table lists every variable of the schema, and only those', async (t) => {
  t.same(rows.map((r) => r.name).sort(), Object.keys(envSchema.shape).sort())
})

t.test('documented defaults are the schema defaults', async (t) => {
  for (const { name, def } of rows) {
    const field = (envSchema.shape as Record<string, { safeParse: (v: unknown) => { success: boolean, data?: unknown } }>)[name]
    const parsed = field.safeParse(undefined)
    if (def === 'required') { t.notOk(parsed.success, `${name} is required`); continue }
    if (!def.startsWith('`')) continue // prose such as "embedded" or "unset"
    t.ok(parsed.success, `${name} has a default`)
    t.equal(String(parsed.data).toLowerCase(), def.replace(/`/g, '').toLowerCase(), `${name} default`)
  }
})

// ---- the quick start, run as written --------------------------------------------------------
// Its ```sh blocks, in order, are the commands a newcomer types. They run here in an empty
// directory, with three rewrites that keep the test off the developer's ports and checkout:
// `npx usage-proxy` is this build's dist/cli.js, `npm start` is dist/main.js in that directory,
// and the ports 8787 and 54320 are free ones. `npm ci` is not run (the suite runs in an installed
// checkout). Step 2's edit (the real key) is made the way the prose says, and the upstream is a
// fake OpenRouter, named in .env as an operator would name another one.

const quickStart = readme.slice(readme.indexOf('## Quick start'), readme.indexOf('\n## ', readme.indexOf('## Quick start') + 5))
const blocks = [...quickStart.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1].replace(/^ {3}/gm, '').trim())
const commands = blocks.join('\n')

t.test('the quick start is in the order that works: install, gen-env, the key, start, then use it', async (t) => {
  const at = (re: RegExp): number => { const m = re.exec(commands); return m ? m.index : -1 }
  const order = [/^npm ci$/m, /usage-proxy gen-env .*> \.env$/m, /^npm start$/m, /^curl .*\/v1\/chat\/completions/m, /^psql /m, /ADMIN_API_KEY/m].map(at)
  t.ok(order.every((i) => i >= 0), `every step is there (${order.join(', ')})`)
  t.same([...order].sort((a, b) => a - b), order, 'in this order')
  const prose = quickStart.slice(quickStart.indexOf('gen-env'), quickStart.indexOf('npm start'))
  t.match(prose, /OPENROUTER_API_KEY/, 'the key is set between gen-env and npm start')
  t.match(readme, /npm test takes about/, 'and it says how long the tests take')
})

t.test('the quick start runs: the curl goes through the sidecar, psql shows the row, the admin key opens the page', async (t) => {
  const fake = await new FakeOpenRouter(9).start()
  t.teardown(() => fake.close())
  const dir = cleanCwd()
  const port = await freePort()
  const dbPort = await freePort()
  const rewrite = (cmd: string): string => cmd
    .replace(/npx usage-proxy /g, `"${process.execPath}" "${CLI}" `)
    .replace(/localhost:8787|127\.0\.0\.1:8787/g, `127.0.0.1:${port}`)
    .replace(/127\.0\.0\.1:54320/g, `127.0.0.1:${dbPort}`)
  // Asynchronous: the fake OpenRouter answers from this process, so it must not be blocked.
  const sh = (cmd: string): Promise<{ status: number | null, stdout: string, stderr: string }> => new Promise((resolve) => {
    execFile('bash', ['--norc', '--noprofile', '-c', rewrite(cmd)], { cwd: dir, env: childEnv({}), encoding: 'utf8', timeout: 60_000 },
      (err, stdout, stderr) => resolve({ status: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }))
  })

  const [install, start, curl, psql, admin] = blocks
  t.equal(install.split('\n')[0], 'npm ci')
  const gen = await sh(install.split('\n').slice(1).join('\n'))
  t.equal(gen.status, 0, `gen-env: ${gen.stderr}`)
  t.equal(start, 'npm start')
  const early = spawnSync(process.execPath, [MAIN], { cwd: dir, env: childEnv({}), encoding: 'utf8', timeout: 30_000 })
  t.equal(early.status, 2, 'with the placeholder key still in .env, npm start exits 2')
  t.match(early.stderr + early.stdout, /OPENROUTER_API_KEY/, 'naming the key')

  // Step 2, as the prose says; then the test's own upstream and ports.
  const env = readFileSync(join(dir, '.env'), 'utf8').replace('OPENROUTER_API_KEY=sk-or-v1-REPLACE_ME', `OPENROUTER_API_KEY=${TEST_KEY}`)
  writeFileSync(join(dir, '.env'), env + [`OPENROUTER_BASE_URL=${fake.baseUrl}`, `PORT=${port}`, `EMBEDDED_DB_PORT=${dbPort}`, 'HOST=127.0.0.1', 'LEDGER_FLUSH_MS=10', ''].join('\n'))
  // Its first start runs initdb and the migrations in the embedded database's WebAssembly, on V8's
  // baseline compiler here (support/wasm-flags.ts): the same steps, some 2 s of CPU less.
  const proc = spawnNode([...WASM_BASELINE_ONLY, MAIN], {}, dir)
  let out = ''
  proc.stdout!.on('data', (c) => { out += c })
  proc.stderr!.on('data', (c) => { out += c })
  const exited = new Promise((r) => proc.once('exit', r))
  t.teardown(async () => { proc.kill('SIGTERM'); await exited })
  for (let i = 0; i < 1200 && !/"msg":"ready"/.test(out) && proc.exitCode === null; i++) await new Promise((r) => setTimeout(r, 100))
  t.match(out, /"msg":"ready"/, 'npm start logs ready')
  t.match(out, new RegExp(`psql \\\\"postgresql://postgres@127\\.0\\.0\\.1:${dbPort}/postgres\\?sslmode=disable`), 'and the psql command README shows')
  // (test/embedded.test.ts's boot on an empty DATA_DIR with a .env in the working directory is this one.)
  t.match(out, /"level":40,.*"msg":"the embedded database is for trying usage-proxy out.*In production set DATABASE_URL/, 'says plainly the embedded database is for trying out, and what to use instead')

  const answer = await sh(curl)
  t.equal(answer.status, 0, `curl exit ${answer.status}: ${answer.stderr} ${rewrite(curl)}`)
  const body = JSON.parse(answer.stdout) as { id: string, choices: unknown[] }
  t.ok(body.choices.length > 0, 'the curl gets a chat completion back through the sidecar')

  // psql's query, on the URL printed in README (the port rewritten): read with postgres.js, so
  // it runs wherever the suite does; and with psql itself where psql is installed.
  const url = /psql "([^"]+)"/.exec(psql)![1]
  const query = /-c "([^"]+)"/.exec(psql)![1]
  const sql = postgres(rewrite(url).replace('?sslmode=disable', ''), { max: 1, onnotice: () => {} })
  t.teardown(() => sql.end({ timeout: 1 }))
  let rows: Array<Record<string, unknown>> = []
  for (let i = 0; i < 300 && rows.length === 0; i++) {
    rows = await sql.unsafe(query)
    if (rows.length === 0) await new Promise((r) => setTimeout(r, 50))
  }
  t.equal(rows.length, 1, 'one row for the one request')
  t.same([rows[0].user_id, rows[0].outcome, String(rows[0].cost_usd)], ['anna', 'ok', fake.generations.get(body.id)!.cost], 'billed to anna, the cost exactly as charged')
  const [org] = await sql`select name from organizations`
  t.equal(org.name, parseEnv(env).ORGANIZATION_NAME, 'the organization row is the one .env names')
  t.equal((await sql`select * from spend_per_user_month`).length, 1, 'billing views work on the embedded database too')
  const hasPsql = spawnSync('bash', ['--norc', '--noprofile', '-c', 'command -v psql'], { env: childEnv({}) }).status === 0
  if (hasPsql) {
    const p = await sh(psql)
    t.equal(p.status, 0, p.stderr)
    t.match(p.stdout, /anna/, 'psql, run as printed, shows the row')
  }

  const key = (await sh(admin)).stdout.trim()
  t.ok(key.length >= 16, 'the admin key from .env')
  const page = await request(`http://127.0.0.1:${port}/admin/`)
  t.equal(page.statusCode, 200, 'the usage page is served')
  await page.body.dump()
  const usage = await request(`http://127.0.0.1:${port}/admin/v1/usage?group_by=user`, { headers: { authorization: `Bearer ${key}` } })
  t.equal(usage.statusCode, 200, 'and the key opens it')
  t.match(await usage.body.text(), /"user":"anna"/, 'showing anna')
})
