import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { createTestDb, type TestDb } from './support/db.js'
import { ensureBuilt, runNodeAsync } from './support/child.js'
import { startSidecar, TEST_KEY } from './support/sidecar.js'
import { createLogger } from '../src/lib/log.js'
import { migrate } from '../src/db/migrate.js'
import { Ledger } from '../src/usage/ledger/ledger.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'
import { runVerify } from '../src/usage/reports/verify-command.js'
import { compactRollups } from '../src/usage/ledger/rollups.js'

// `usage-proxy verify` and its admin twin: the rollups recomputed from the raw rows; a single
// corrupted rollup row is named, and the exit code says so. Reports read from DATABASE_READ_URL.

const log = createLogger('silent')
const ORG = 'mai_client_verify'

const rec = (i: number, createdAt: string): UsageRecord => ({
  eventId: randomUUID(), generationId: `gen-verify-${i}-${randomUUID()}`, organizationId: ORG, userId: `user-${i % 2}`, externalUserId: `${ORG}_u${i % 2}`,
  endpoint: 'chat/completions', model: 'vendor/m', servedModel: 'vendor/m', provider: 'p', streamed: false, status: 200, outcome: 'ok',
  finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: 10, completionTokens: 5, totalTokens: 15,
  cachedTokens: 0, reasoningTokens: 0, costUsd: `0.00${i}1000000000000000007`, upstreamCostUsd: null, isByok: false,
  markupPercent: '10', latencyMs: 1.5, ttfbMs: 0.5, chatId: null, kind: 'chat', messageId: null, createdAt,
})

async function filled (rows: Array<[number, string]>): Promise<TestDb> {
  const db = await createTestDb({ migrated: true })
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name, markup_percent) values (${ORG}, 'Verify', 10)`
  const ledger = new Ledger(db.sql, null, log, { batchSize: 100, flushMs: 1 })
  for (const [i, at] of rows) ledger.record(rec(i, at))
  if (!await ledger.drain(10_000)) throw new Error('not drained')
  ledger.close()
  await compactRollups(db.sql) // so that corrupting usage_daily_rollups corrupts what readers see
  return db
}

function capture (): { out: (s: string) => void, err: (s: string) => void, text: () => string } {
  let text = ''
  return { out: (s) => { text += s }, err: (s) => { text += s }, text: () => text }
}

t.test('verify finds nothing on honest rollups and names a corrupted row (API and exit code)', async (t) => {
  const db = await filled([[1, '2026-03-05T10:00:00Z'], [2, '2026-03-05T11:00:00Z'], [3, '2026-03-31T23:59:59.999Z'], [4, '2026-04-01T00:00:00Z']])
  t.teardown(() => db.drop())
  const env = { DATABASE_URL: db.url }
  const clean = capture()
  t.equal(await runVerify([], env, clean.out, clean.err), 0, clean.text())
  t.match(clean.text(), /rollup rows match 4 raw rows/)

  await db.sql`update usage_daily_rollups set cost_usd = cost_usd + 0.000000000000000000001 where day = '2026-03-05' and external_user_id = ${ORG + '_u1'}`
  const bad = capture()
  t.equal(await runVerify(['--month', '2026-03'], env, bad.out, bad.err), 1, 'exit 1 on a difference')
  t.match(bad.text(), /mai_client_verify 2026-03-05 user=mai_client_verify_u1 model=vendor\/m kind=chat: cost_usd: rollup 0\.\d+ != raw 0\.\d+/)
  t.match(bad.text(), /1 rollup row\(s\) differ/)
  const april = capture()
  t.equal(await runVerify(['--month=2026-04'], env, april.out, april.err), 0, 'another month is clean')

  // A raw row without its rollup (deleted behind the trigger's back) is found too.
  await db.sql`delete from usage_events where created_at = '2026-04-01T00:00:00Z'`
  const gone = capture()
  t.equal(await runVerify(['--month=2026-04'], env, gone.out, gone.err), 1)
  t.match(gone.text(), /requests: rollup 1 != raw \(no row\)/)

  const usage = capture()
  t.equal(await runVerify(['--month', '2026-13'], env, usage.out, usage.err), 2, 'a bad month is a usage error')
  t.match(usage.text(), /--month must be YYYY-MM/)
  t.equal(await runVerify(['--bogus'], env, usage.out, usage.err), 2)
  t.equal(await runVerify([], { DATABASE_URL: 'mysql://x' }, usage.out, usage.err), 2)
  t.match(usage.text(), /DATABASE_URL must be a postgres:\/\/ URL/)
})

t.test('verify checks the group rollups: a group day against its raw rows, a group month against its days', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name, markup_percent) values (${ORG}, 'Verify', 10)`
  const ledger = new Ledger(db.sql, null, log, { batchSize: 100, flushMs: 1 })
  const grouped: Array<[number, string, string[]]> = [[1, '2026-07-02T10:00:00Z', ['sales', 'staff']], [2, '2026-07-02T11:00:00Z', ['sales']], [3, '2026-07-20T09:00:00Z', []]]
  for (const [i, at, groups] of grouped) ledger.record({ ...rec(i, at), groups })
  if (!await ledger.drain(10_000)) throw new Error('not drained')
  ledger.close()
  const env = { DATABASE_URL: db.url }
  const pending = capture()
  t.equal(await runVerify(['--month', '2026-07'], env, pending.out, pending.err), 0, 'deltas not folded yet count as readers see them: ' + pending.text())
  t.match(pending.text(), /group day and \d+ group month rows match|rollup rows match 3 raw rows/)
  await compactRollups(db.sql)
  const clean = capture()
  t.equal(await runVerify(['--month', '2026-07'], env, clean.out, clean.err), 0, clean.text())
  t.match(clean.text(), /3 group day and 3 group month rows match/)

  await db.sql`update usage_group_daily_rollups set billed_cost_usd = billed_cost_usd + 0.000000000000000000001 where group_id = 'staff'`
  const day = capture()
  t.equal(await runVerify(['--month', '2026-07'], env, day.out, day.err), 1, 'exit 1 on a group day that differs')
  t.match(day.text(), /mai_client_verify 2026-07-02 group=staff user=mai_client_verify_u1 model=vendor\/m kind=chat: billed_cost_usd: group rollup 0\.\d+ != raw 0\.\d+/)
  t.match(day.text(), /month 2026-07 group=staff .*billed_cost_usd: group rollup 0\.\d+ != its days 0\.\d+/, 'and its month no longer sums its days')
  await db.sql`update usage_group_daily_rollups set billed_cost_usd = billed_cost_usd - 0.000000000000000000001 where group_id = 'staff'`

  await db.sql`update usage_group_monthly_rollups set requests = requests + 1 where group_id = 'sales'`
  const month = capture()
  t.equal(await runVerify([], env, month.out, month.err), 1, 'exit 1 on a group month that differs')
  t.match(month.text(), /month 2026-07 group=sales user=mai_client_verify_u0 .*requests: group rollup 2 != its days 1/)
  t.notMatch(month.text(), /2026-07-02 group=sales/, 'the days themselves are not blamed')
  await db.sql`update usage_group_monthly_rollups set requests = requests - 1 where group_id = 'sales'`

  await db.sql`update usage_events set groups = '{}' where created_at = '2026-07-02T11:00:00Z'`
  const gone = capture()
  t.equal(await runVerify(['--month', '2026-07'], env, gone.out, gone.err), 1, 'a group row whose raw rows left the group is found')
  t.match(gone.text(), /2026-07-02 group=sales user=mai_client_verify_u0 .*requests: group rollup 1 != raw \(no row\)/)
})

// The command as an operator runs it: a separate process, exit code and all.
t.test('usage-proxy verify as a command', async (t) => {
  const db = await filled([[1, '2026-05-05T10:00:00Z']])
  t.teardown(() => db.drop())
  const cli = join(process.cwd(), 'dist', 'cli.js')
  ensureBuilt()
  // Not blocking this process: it may serve the database (the embedded fallback of support/db).
  const run = (args: string[]) => runNodeAsync([cli, 'verify', ...args], { DATABASE_URL: db.url }, 30_000)
  const ok = await run(['--month', '2026-05'])
  t.equal(ok.status, 0, ok.stdout + ok.stderr)
  await db.sql`update usage_daily_rollups set requests = requests + 1`
  const bad = await run([])
  t.equal(bad.status, 1, 'non-zero exit when a rollup differs')
  t.match(bad.stdout, /2026-05-05 .* requests: rollup 2 != raw 1/)
})

t.test('admin reports read from DATABASE_READ_URL; writes stay on DATABASE_URL', async (t) => {
  const primary = await filled([[1, '2026-06-01T10:00:00Z']])
  const replica = await filled([[1, '2026-06-01T10:00:00Z'], [2, '2026-06-02T10:00:00Z'], [3, '2026-06-03T10:00:00Z']])
  t.teardown(async () => { await primary.drop(); await replica.drop() })
  const ADMIN = 'admin-key-0123456789abcdef'
  const { sidecar, url } = await startSidecar({
    OPENROUTER_API_KEY: TEST_KEY, OPENROUTER_EXTERNAL_USER: ORG, ORGANIZATION_NAME: 'Verify', OPENROUTER_BASE_URL: 'http://127.0.0.1:9',
    DATABASE_URL: primary.url, DATABASE_READ_URL: replica.url, ADMIN_API_KEY: ADMIN, RETENTION_MONTHS: '24',
    PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', DATA_DIR: mkdtempSync(join(tmpdir(), 'verify-')),
  })
  t.teardown(() => sidecar.stop())
  const get = async (path: string) => {
    const r = await fetch(url + path, { headers: { authorization: `Bearer ${ADMIN}` } })
    return { status: r.status, body: await r.json() as any }
  }
  // The replica connects in the background; until then the primary answers.
  let v = await get('/admin/v1/rollups/verify')
  for (const deadline = Date.now() + 10_000; v.body.raw_rows !== 3 && Date.now() < deadline;) {
    await new Promise((r) => setTimeout(r, 25))
    v = await get('/admin/v1/rollups/verify')
  }
  t.equal(v.status, 200)
  t.equal(v.body.raw_rows, 3, 'counted on the replica')
  t.equal(v.body.ok, true)
  t.equal((await get('/admin/v1/rollups/verify?month=2026-6')).status, 400)
  const parts = await get('/admin/v1/partitions')
  t.equal(parts.status, 200)
  t.equal(parts.body.retention_months, 24)
  t.ok(parts.body.data.some((p: any) => p.name === 'usage_events_default'))
  t.equal(parts.body.maintenance, null, 'the replica never ran maintenance: the sidecar ran it on the primary')
  const [m] = await primary.sql`select ran_on from usage_maintenance`
  t.ok(m, 'maintenance ran on the primary')
})

// Each fold adds to what the rollup row already holds: a key folded a second time (a later batch
// for the same day, user, model and kind) must sum, never overwrite.
t.test('compaction folds a key a second time into the same rollup row, adding', async (t) => {
  const db = await filled([[1, '2026-06-10T08:00:00Z'], [3, '2026-06-10T09:00:00Z']])
  t.teardown(() => db.drop())
  const ledger = new Ledger(db.sql, null, log, { batchSize: 100, flushMs: 1 })
  for (const [i, at] of [[5, '2026-06-10T10:00:00Z'], [7, '2026-06-10T11:00:00Z']] as Array<[number, string]>) ledger.record(rec(i, at))
  t.ok(await ledger.drain(10_000))
  ledger.close()
  await compactRollups(db.sql)
  const [row] = await db.sql`select requests::int, total_tokens::int, cost_usd::text from usage_daily_rollups where day = '2026-06-10'`
  const [raw] = await db.sql`select count(*)::int as requests, sum(total_tokens)::int as total_tokens, sum(cost_usd)::text as cost_usd from usage_events`
  t.same(row, raw, 'one row (every record is user 1, vendor/m, chat) holding all four requests, to the last digit')
  t.equal(row.requests, 4)
  const clean = capture()
  t.equal(await runVerify(['--month=2026-06'], { DATABASE_URL: db.url }, clean.out, clean.err), 0, clean.text())
})
