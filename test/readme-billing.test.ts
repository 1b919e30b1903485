import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { createTestDb, type TestDb } from './support/db.js'
import { migrate } from '../src/db/migrate.js'

// README's billing queries, exactly as printed, run against a seeded ledger: each returns what
// the README says it does. The session runs at UTC+14, so any query that used the session's time
// zone instead of UTC would put the month boundaries 14 hours off and fail.

const ROOT = join(fileURLToPath(import.meta.url), '..', '..')
const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')
const billing = readme.slice(readme.indexOf('## Billing with psql'), readme.indexOf('\n## ', readme.indexOf('## Billing with psql') + 5))
const statements = [...billing.matchAll(/```sql\n([\s\S]*?)```/g)].flatMap((m) => m[1].split(/;\s*\n/)).map((s) => s.trim()).filter((s) => s !== '')
const query = (title: string): string => {
  const found = statements.filter((s) => s.startsWith(`-- ${title}`))
  if (found.length !== 1) throw new Error(`README has ${found.length} queries titled "${title}"`)
  return found[0]
}

/** numeric text without trailing zeros: 2.20000 -> 2.2 (exact; no float on the way) */
const dec = (v: unknown): string => { const s = String(v); return s.includes('.') ? s.replace(/\.?0+$/, '') : s }

let db: TestDb
let sql: postgres.Sql<{}>
const ORG = 'mai_client_billing'

// Month boundaries in UTC, as JS sees them.
const now = new Date()
const thisMonth = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)
const lastMonth = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1)
const at = (ms: number): string => new Date(ms).toISOString()

t.before(async () => {
  db = await createTestDb()
  await migrate(db.sql, join(ROOT, 'sql'))
  await db.sql`insert into organizations (id, name, markup_percent) values (${ORG}, 'Billing GmbH', 10)`
  await db.sql`insert into user_mappings (organization_id, user_id, external_user_id, user_name, user_email) values
    (${ORG}, 'u-1', ${ORG + '_user_1'}, 'Ana', 'ana@example.com'),
    (${ORG}, 'u-2', ${ORG + '_user_2'}, 'Bob', 'bob@example.com')`
  let n = 0
  const row = async (ms: number, userId: string | null, externalId: string, kind: string, cost: string, outcome = 'ok', cancelled: boolean | null = null): Promise<void> => {
    n++
    await db.sql`insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status,
      outcome, usage_source, prompt_tokens, completion_tokens, total_tokens, cost_usd, markup_percent, kind, cancelled, created_at)
      values (gen_random_uuid(), ${'gen-' + n}, ${ORG}, ${userId}, ${externalId}, 'chat/completions', 'm/one', true, 200,
      ${outcome}, 'inline', 10, 5, 15, ${cost}, 10, ${kind}, ${cancelled}, ${at(ms)})`
  }
  // this month (UTC)
  await row(thisMonth + 1000, 'u-1', ORG + '_user_1', 'chat', '0.001')
  await row(thisMonth + 2000, 'u-1', ORG + '_user_1', 'chat', '0.001', 'client_aborted', true)
  await row(thisMonth + 3000, 'u-1', ORG + '_user_1', 'title_generation', '0.0001')
  await row(thisMonth + 4000, 'app-user-7', ORG + '_user_7', 'api', '0.002') // a body `user`: no mapping with a name
  await row(thisMonth + 5000, null, ORG, 'api', '0.003') // nobody identified
  await row(thisMonth + 6000, 'u-2', ORG + '_user_2', 'chat', '2')
  // last month (UTC), and just outside it on both sides
  await row(lastMonth - 1000, 'u-1', ORG + '_user_1', 'chat', '100') // the month before
  await row(lastMonth + 1000, 'u-1', ORG + '_user_1', 'chat', '0.0105')
  await row(thisMonth - 1000, 'u-2', ORG + '_user_2', 'chat', '0.02')
  sql = postgres(db.url, { max: 1, onnotice: () => {}, connection: { TimeZone: 'Pacific/Kiritimati' } })
})
t.teardown(async () => { await sql?.end({ timeout: 1 }); await db?.drop() })

t.test('README shows the billing queries and every one of them runs', async (t) => {
  t.ok(statements.length >= 6, `${statements.length} statements`)
  const [{ tz }] = await sql`select current_setting('TimeZone') as tz`
  t.equal(tz, 'Pacific/Kiritimati', 'the session is 14 hours ahead of UTC')
  for (const s of statements) await t.resolves(sql.unsafe(s), s.split('\n')[0])
})

t.test('per user this month: user_id tells body users and the organization apart; kinds summed', async (t) => {
  const rows = await sql.unsafe(query('What each user cost this month'))
  t.same(rows.map((r) => [r.user_id, r.user_name, String(r.requests), dec(r.cost_usd), dec(r.billed_cost_usd)]), [
    ['u-2', 'Bob', '1', '2', '2.2'],
    ['(organization)', null, '1', '0.003', '0.0033'],
    ['u-1', 'Ana', '3', '0.0021', '0.00231'],
    ['app-user-7', null, '1', '0.002', '0.0022'],
  ], 'ordered by billed cost, exact')
})

t.test('background tasks apart from chats', async (t) => {
  const rows = await sql.unsafe(query('Background tasks apart from chats'))
  t.same(Object.fromEntries(rows.map((r) => [r.kind, [String(r.requests), dec(r.billed_cost_usd)]])), {
    chat: ['3', '2.2022'], api: ['2', '0.0055'], title_generation: ['1', '0.00011'],
  })
})

t.test('invoice for last month: UTC boundaries, exact totals, rounded to cents once', async (t) => {
  const rows = await sql.unsafe(query('One invoice line per organization for last month'))
  t.equal(rows.length, 1)
  t.same([rows[0].name, dec(rows[0].cost_usd), dec(rows[0].billed_usd), rows[0].invoice_usd], ['Billing GmbH', '0.0305', '0.03355', '0.03'],
    'the rows 1 s inside last month count; those 1 s outside do not')
})

t.test('daily totals and cancelled answers', async (t) => {
  const days = await sql.unsafe(query('Daily totals over the last 30 UTC days'))
  const first = days.find((d) => new Date(d.day).getTime() === thisMonth)
  t.same(first && [String(first.requests), String(first.failed_or_aborted)], ['6', '1'], 'the first UTC day of this month')
  const cancelled = await sql.unsafe(query('Cancelled answers'))
  t.same(cancelled.map((r) => [r.user_id, r.kind, r.cancelled, dec(r.cost_usd)]), [['u-1', 'chat', true, '0.001']])
  const models = await sql.unsafe(query('Spend per model per month'))
  t.equal(models.length, 3, 'one line per month and model: three months seeded')
})
