import t from 'tap'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { createTestDb, type TestDb } from './support/db.js'
import { migrate } from '../src/db/migrate.js'
import { documentedStatements, forOrganization } from './doc-sql.mjs'

// The SQL that README.md and docs/ print, exactly as printed, run against a seeded ledger: each
// billing query returns what the README says it does, every statement runs, and none of them
// reads the raw rows or the daily rollups whole (at 10 million rows that took seconds;
// bench/scale.js query times them at size). The session runs at UTC+14, so any query that used
// the session's time zone instead of UTC would put the month boundaries 14 hours off and fail.

const ROOT = join(fileURLToPath(import.meta.url), '..', '..')
const statements = documentedStatements(ROOT)
const query = (title: string): string => {
  const found = statements.filter((s) => s.title.startsWith(title))
  if (found.length !== 1) throw new Error(`the documentation has ${found.length} queries titled "${title}"`)
  return found[0].sql
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
  db = await createTestDb({ migrated: true })
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
  // The views add the folded rollups and the deltas not folded yet: some of each.
  await db.sql`select usage_rollup_compact()`
  await row(thisMonth + 5000, null, ORG, 'api', '0.003') // nobody identified
  await row(thisMonth + 6000, 'u-2', ORG + '_user_2', 'chat', '2')
  // last month (UTC), and just outside it on both sides
  await row(lastMonth - 1000, 'u-1', ORG + '_user_1', 'chat', '100') // the month before
  await row(lastMonth + 1000, 'u-1', ORG + '_user_1', 'chat', '0.0105')
  await row(thisMonth - 1000, 'u-2', ORG + '_user_2', 'chat', '0.02')
  sql = postgres(db.url, { max: 1, onnotice: () => {}, connection: { TimeZone: 'Pacific/Kiritimati' } })
})
t.teardown(async () => { await sql?.end({ timeout: 1 }); await db?.drop() })

/** Runs `fn` in a transaction that is rolled back: a documented write leaves nothing behind. */
async function rolledBack<T> (fn: (tx: postgres.TransactionSql<{}>) => Promise<T>): Promise<T> {
  let result: T | undefined
  const rollback = new Error('rollback')
  await sql.begin(async (tx) => { result = await fn(tx); throw rollback }).catch((err) => { if (err !== rollback) throw err })
  return result as T
}

t.test('the documentation shows the billing queries and every statement it prints runs', async (t) => {
  t.ok(statements.length >= 6, `${statements.length} statements`)
  const [{ tz }] = await sql`select current_setting('TimeZone') as tz`
  t.equal(tz, 'Pacific/Kiritimati', 'the session is 14 hours ahead of UTC')
  for (const s of statements) await t.resolves(rolledBack((tx) => tx.unsafe(forOrganization(s.sql, ORG))), `${s.file}: ${s.title}`)
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
  t.equal(models.length, 3, 'one line per month and model: the three months seeded, the month before last included')
})

t.test('the views show exact amounts without trailing zeros', async (t) => {
  // The raw sums carry the scale of cost × (1 + markup / 100); the views show the same numbers trimmed.
  const [raw] = await sql`select sum(billed_cost_usd)::text as billed from usage_events where external_user_id = ${ORG + '_user_1'}`
  t.match(raw.billed, /0$/, `the raw sum ends in zeros (${raw.billed})`)
  const shown = [
    ...await sql`select cost_usd::text as c, billed_cost_usd::text as b from spend_per_user_month`,
    ...await sql`select cost_usd::text as c, billed_cost_usd::text as b from spend_per_model_month`,
    ...await sql`select cost_usd::text as c, billed_cost_usd::text as b from spend_per_day`,
  ]
  t.ok(shown.length > 10)
  const untrimmed = shown.flatMap((r) => [r.c, r.b]).filter((v) => /\.\d*0$|\.$/.test(v))
  t.same(untrimmed, [], 'no amount in the views ends in a zero after the point')
  const [mine] = await sql`select sum(billed_cost_usd)::text as b from spend_per_user_month where external_user_id = ${ORG + '_user_1'}`
  t.equal(mine.b, dec(raw.billed), 'the same number, to the last digit')
  const [trimmed] = await sql`select trim_scale(0.0143275740000000000000000000::numeric)::text as v`
  t.equal(trimmed.v, '0.014327574')
  // A cost whose own text ends in zeros, folded into the rollups: every view shows it trimmed.
  const views = await rolledBack(async (tx) => {
    await tx`insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status,
      outcome, usage_source, prompt_tokens, completion_tokens, total_tokens, cost_usd, markup_percent, kind, created_at)
      values (gen_random_uuid(), 'gen-zeros', ${ORG}, 'u-1', ${ORG + '_user_1'}, 'chat/completions', 'm/one', true, 200,
      'ok', 'inline', 10, 5, 15, '0.25000', 10, 'chat', '2001-01-15T12:00:00Z')`
    await tx`select usage_rollup_compact()`
    return tx`select (select cost_usd::text || ' ' || billed_cost_usd::text from spend_per_user_month where month = '2001-01-01') as u,
      (select cost_usd::text || ' ' || billed_cost_usd::text from spend_per_model_month where month = '2001-01-01') as m,
      (select cost_usd::text || ' ' || billed_cost_usd::text from spend_per_day where day = '2001-01-15') as d`
  })
  t.same(views[0], { u: '0.25 0.275', m: '0.25 0.275', d: '0.25 0.275' }, '0.25000 billed at 10% shows as 0.25 and 0.275')
})

interface PlanNode { 'Node Type': string, 'Relation Name'?: string, 'Index Name'?: string, Plans?: PlanNode[] }
const scans = (n: PlanNode): PlanNode[] => [...(n['Relation Name'] !== undefined ? [n] : []), ...(n.Plans ?? []).flatMap(scans)]
// A bitmap heap scan names its relation; the bitmap index scans below it name the index.
const indexOf = (n: PlanNode): string | undefined => n['Index Name'] ??
  (n['Node Type'] === 'Bitmap Heap Scan' ? bitmapIndexes(n)[0] : undefined)
const bitmapIndexes = (n: PlanNode): string[] => (n.Plans ?? []).flatMap((c) => [...(c['Index Name'] !== undefined ? [c['Index Name']] : []), ...bitmapIndexes(c)])

/**
 * The relations and indexes a documented statement's plan reads. `seqscan: false` prices
 * sequential scans out, so what remains is what the indexes allow. `years`: first two years of
 * other organizations' monthly rollups (100,000 rows, analyzed), so the planner weighs a month
 * filter as it does on a real ledger, where this month is a small part of the table.
 */
async function planOf (statement: string, opts: { seqscan?: boolean, years?: boolean } = {}): Promise<Array<{ node: string, relation: string, index: string | null }>> {
  return rolledBack(async (tx) => {
    if (opts.seqscan === false) await tx`set local enable_seqscan = off`
    if (opts.years === true) {
      await tx`insert into usage_monthly_rollups
        select 'other_org_' || (i % 5), (date '2000-01-01' + (i % 24) * interval '1 month')::date, 'other_u' || i, 'vendor/m' || (i % 50), 'chat',
               1, 0, 10, 5, 15, 0, 0, 0.001, 0, 0.0011, null
        from generate_series(1, 100000) i`
      await tx`analyze usage_monthly_rollups`
    }
    const [row] = await tx.unsafe(`explain (format json) ${forOrganization(statement, ORG)}`)
    const nodes = scans((row['QUERY PLAN'] as Array<{ Plan: PlanNode }>)[0].Plan)
    const out = []
    for (const n of nodes) {
      // An index of a partition belongs to the index made on the partitioned table.
      const index = indexOf(n)
      const [parent] = index === undefined
        ? [{ name: null }]
        : await tx`select coalesce((select inhparent::regclass::text from pg_inherits where inhrelid = ${index}::regclass), ${index}) as name`
      out.push({ node: n['Node Type'], relation: n['Relation Name']!, index: parent.name as string | null })
    }
    return out
  })
}

const big = (relation: string): boolean => relation === 'usage_daily_rollups' || relation.startsWith('usage_events')

t.test('no documented statement scans the raw rows or the daily rollups sequentially', async (t) => {
  for (const s of statements) {
    const seq = (await planOf(s.sql, { seqscan: false })).filter((n) => n.node === 'Seq Scan' && big(n.relation))
    t.same(seq, [], `${s.file}: ${s.title}`)
  }
})

t.test('the billing queries read the monthly and per-organization daily rollups, by their own date columns', async (t) => {
  const monthly = ['What each user cost this month', 'Background tasks apart from chats', 'One invoice line per organization', 'Spend per model per month']
  for (const title of [...monthly, 'Daily totals over the last 30 UTC days']) {
    const plan = await planOf(query(title), { years: true })
    t.same(plan.filter((n) => big(n.relation)), [], `${title}: neither raw rows nor daily rollups`)
    if (monthly.includes(title)) {
      t.ok(plan.some((n) => n.relation === 'usage_monthly_rollups' && n.index === 'usage_monthly_rollups_month'), `${title}: the month's rows through the month index`, { plan })
    }
  }
})

t.test('the cancelled answers are read newest first from their own index', async (t) => {
  const plan = await planOf(query('Cancelled answers'), { seqscan: false })
  const raw = plan.filter((n) => n.relation.startsWith('usage_events'))
  t.ok(raw.length > 0)
  t.same(raw.filter((n) => n.index !== 'usage_events_client_aborted'), [], 'every partition through usage_events_client_aborted')
})
