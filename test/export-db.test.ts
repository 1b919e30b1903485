import t from 'tap'
import type { Test } from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { TEST_KEY } from './support/test-key.js'
import { WASM_BASELINE_ONLY } from './support/wasm-flags.js'
import { CLI, freePort, runNode, runNodeAsync, spawnSidecar, type Child } from './support/child.js'
import { journalLines, sendAs, until } from './support/crash-cycle.js'
import { blankEmbeddedDataDir } from './support/pglite-dir.js'
import { runVerify } from '../src/usage/reports/verify-command.js'
import { runExportDb } from '../src/db/export-command.js'

// README "Leaving the embedded database": a trial on the embedded database becomes a deployment on
// a PostgreSQL server without losing a row. The sidecar runs on PGlite, records usage and budgets,
// and is killed with a request in flight (its intent only in the journal). `usage-proxy export-db`
// copies the ledger into a fresh database; started there with DATABASE_URL and the same DATA_DIR,
// the sidecar has every row and budget, exact, and the journal's interrupted request becomes its row.

const ORG = 'mai_client_export'
const ADMIN = 'admin-key-0123456789abcdef'

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(23).start() })
t.teardown(async () => { await fake.close() })

const env = (dataDir: string, extra: Record<string, string> = {}): Record<string, string> => ({
  OPENROUTER_API_KEY: TEST_KEY, OPENROUTER_EXTERNAL_USER: ORG, ORGANIZATION_NAME: 'Export GmbH', OPENROUTER_BASE_URL: fake.baseUrl,
  DATA_DIR: dataDir, LEDGER_FLUSH_MS: '10', LOG_LEVEL: 'warn', ADMIN_API_KEY: ADMIN, MARKUP_PERCENT: '12.5', USER_BUDGET_USD: '5', ...extra,
})

async function start (t: Test, e: Record<string, string>, nodeArgs: string[] = []): Promise<Child> {
  const child = spawnSidecar(e, await freePort(), nodeArgs)
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady(120_000)
  return child
}

/** Every row of the ledger's billing tables as exact text, keyed for comparison. */
async function ledger (sql: postgres.Sql<{}>): Promise<Record<string, string[]>> {
  const text = async (q: string): Promise<string[]> => (await sql.unsafe<Array<{ j: string }>>(q)).map((r) => r.j)
  // Rollups are folded from their deltas every few seconds: fold them now, so a fold landing
  // between two readings (the sidecar's, on a busy machine) does not read as a change.
  await sql`select usage_rollup_compact()`
  return {
    // With the partition each row sits in: retention drops partitions whole.
    // export_xid is a transaction id of the copied-from cluster: the copy resets it (copy-ledger.ts).
    events: await text("select (to_jsonb(e) - 'export_xid')::text as j from (select tableoid::regclass::text as part, * from usage_events) e order by event_id"),
    budgets: await text('select row_to_json(b)::text as j from (select organization_id, scope, user_id, limit_usd, period, source from budgets) b order by j'),
    mappings: await text('select row_to_json(m)::text as j from (select organization_id, user_id, external_user_id, user_name from user_mappings) m order by j'),
    rollups: await text('select row_to_json(r)::text as j from usage_daily_rollups r order by j'),
  }
}

t.test('embedded ledger -> export-db -> PostgreSQL: the same rows and budgets; the journal carries the request in flight', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'export-db-'))
  // The trial's data directory as initdb left it (blank; the sidecar migrates it as on its first
  // start): a first start's initdb on an empty DATA_DIR is test/readme.test.ts's, not this one's.
  await blankEmbeddedDataDir(dataDir)
  const dbPort = await freePort()
  // The processes that open the embedded database run its WebAssembly on V8's baseline compiler (support/wasm-flags.ts).
  const embedded = await start(t, env(dataDir, { EMBEDDED_DB_PORT: String(dbPort) }), WASM_BASELINE_ONLY)

  for (const user of ['anna', 'bob', 'anna']) t.equal(await sendAs(embedded.url, user, user === 'bob'), 200, `a request as ${user}`)
  const put = await request(`${embedded.url}/admin/v1/budgets/users/anna`, {
    method: 'PUT', headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' }, body: JSON.stringify({ limit_usd: '7.25', period: 'week' }),
  })
  t.equal(put.statusCode, 200, 'a budget set through the admin API')
  await put.body.dump()

  const source = postgres(`postgres://postgres@127.0.0.1:${dbPort}/postgres`, { max: 1, onnotice: () => {} })
  await until('three rows in the embedded ledger', async () => (await source`select count(*)::int as n from usage_events`)[0].n === 3, 30_000)
  // A row of a month long past, in its own partition: it must land in the same one.
  await source`select usage_ensure_partition('2025-01-01')`
  await source`insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status,
    outcome, usage_source, prompt_tokens, completion_tokens, total_tokens, cost_usd, markup_percent, kind, created_at)
    values (gen_random_uuid(), 'gen-old', ${ORG}, 'anna', 'x', 'chat/completions', 'm/old', false, 200, 'ok', 'inline', 1, 2, 3,
    '0.1234567890123456789', 12.5, 'chat', '2025-01-15T12:00:00.123456Z')`
  const before = await ledger(source)
  await source.end({ timeout: 1 })
  t.equal(before.events.length, 4)
  t.ok(before.events.some((e) => /"part": ?"usage_events_2025_01"/.test(e)), 'the old row sits in its month\'s partition')
  t.equal(before.budgets.length, 2, 'the env default-user budget and anna\'s own')

  // A request in flight when the sidecar dies: its intent is only in the journal.
  fake.holdAt = 'headers'
  void sendAs(embedded.url, 'carol', false)
  await until('carol\'s request held upstream', () => fake.held === 1)
  await until('its intent journaled', () => journalLines(dataDir).some((l) => l.k === 'i' && l.r.userId === 'carol'))
  embedded.proc.kill('SIGKILL')
  await embedded.exited
  fake.release()

  const db: TestDb = await createTestDb()
  t.teardown(() => db.drop())
  const copy = await runNodeAsync([...WASM_BASELINE_ONLY, CLI, 'export-db', '--to', db.url], { DATA_DIR: dataDir }, 120_000)
  t.equal(copy.status, 0, `export-db exits 0: ${copy.stderr}`)
  t.match(copy.stdout, /usage_events: 4 rows/)
  t.match(copy.stdout, /Next: set DATABASE_URL/)
  t.same(await ledger(db.sql), before, 'every row, budget, mapping and rollup as it was, to the last digit')

  const again = await runNodeAsync([...WASM_BASELINE_ONLY, CLI, 'export-db', '--to', db.url], { DATA_DIR: dataDir }, 120_000)
  t.equal(again.status, 2, 'a second copy into the same database is refused')
  t.match(again.stderr, /already holds rows in/)
  t.same(await ledger(db.sql), before, 'and writes nothing')

  const server = await start(t, env(dataDir, { DATABASE_URL: db.url }))
  await until('carol\'s interrupted request has its row', async () =>
    (await db.sql`select count(*)::int as n from usage_events where user_id = 'carol' and outcome = 'interrupted'`)[0].n === 1, 30_000)
  const after = await ledger(db.sql)
  t.same(after.events.filter((e) => !e.includes('"carol"')), before.events, 'the copied rows are untouched by the replay')
  t.same(after.budgets, before.budgets, 'budgets as they were: the API\'s stays, the env one is not rewritten')

  const [anna] = await db.sql`select limit_usd::text as limit, period, source from budgets where scope = 'user' and user_id = 'anna'`
  t.same(anna, { limit: '7.25', period: 'week', source: 'api' })
  const [spent] = await db.sql`select spent_usd::text as spent from budget_counters
    where scope = 'user' and user_id = 'anna' and period = 'week' and period_start = budget_period_start('week', now())`
  const [billed] = await db.sql`select sum(billed_cost_usd)::text as billed from usage_events where user_id = 'anna'
    and created_at >= budget_period_start('week', now())`
  t.ok(billed?.billed, 'anna spent this week')
  t.equal(spent?.spent, billed?.billed, 'anna\'s counter holds her billed spend, counted once')

  t.equal(await sendAs(server.url, 'dora', false), 200, 'the sidecar serves on the server database')
  await until('dora\'s row', async () => (await db.sql`select count(*)::int as n from usage_events where user_id = 'dora'`)[0].n === 1)
  const lines: string[] = []
  t.equal(await runVerify([], { DATABASE_URL: db.url }, (s) => lines.push(s), (s) => lines.push(s)), 0, `verify: rollups match the rows (${lines.join('')})`)
})

t.test('export-db: a clear refusal without an embedded database or a target', async (t) => {
  const empty = mkdtempSync(join(tmpdir(), 'export-db-none-'))
  const none = runNode([CLI, 'export-db', '--to', 'postgres://u@127.0.0.1:1/x'], { DATA_DIR: empty })
  t.equal(none.status, 2)
  t.match(none.stderr, /no embedded database under .*pglite: set DATA_DIR/)
  // The command's own answer to its arguments: the process above, and the copies of the first
  // test (exit 0, and 2 on a refusal), show the CLI exits with the code the command returns.
  const run = async (args: string[]): Promise<{ status: number, stderr: string }> => {
    let stderr = ''
    const status = await runExportDb(args, { DATA_DIR: empty }, 'sql', () => {}, (s) => { stderr += s })
    return { status, stderr }
  }
  const noTarget = await run([])
  t.equal(noTarget.status, 2)
  t.match(noTarget.stderr, /--to needs a postgres:\/\/ URL/)
  const stray = await run(['--to', 'postgres://u@h/x', '--force'])
  t.equal(stray.status, 2)
  t.match(stray.stderr, /unexpected argument "--force"/)
})
