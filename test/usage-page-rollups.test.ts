import t from 'tap'
import { cpSync, mkdtempSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { baseEnv, startSidecar } from './support/sidecar.js'
import { createTestDb, type TestDb } from './support/db.js'
import { ORG, seedLedger } from './support/seed.js'
import { migrate } from '../src/db/migrate.js'
import { GROUP_BYS, statementLines, sumsSource, usageByGroup, usageTotals, wholeMonths, type Period } from '../src/usage/reports/usage-report.js'
import { externalUserId } from '../src/identity/external-id.js'
import { compactRollups } from '../src/usage/ledger/rollups.js'
import { verifyRollups } from '../src/usage/reports/verify.js'
import { runVerify } from '../src/usage/reports/verify-command.js'

// Migration 009: a range's whole months come from usage_monthly_rollups, an organization's days
// and kinds from usage_org_daily_rollups, the other days from the daily rollups; all of them plus
// the deltas not folded yet. Every one of those reads must give the digits usage_events gives.
// Also: the migration fills both tables from what is already there, verify checks them, and
// events?model= (two ordered index scans merged) returns exactly the rows of a plain
// `model = $1 or served_model = $1`.

const DAY = 86_400_000
const iso = (ms: number): string => new Date(ms).toISOString().slice(0, 10)
const now = new Date()
const M = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1) // this month
const month = (n: number): number => Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + n, 1)
const TODAY = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate())
const TOMORROW = TODAY + DAY

/** Rows from three months back to the end of today; the last ones stay unfolded deltas. */
async function seeded (db: TestDb, dir = 'sql'): Promise<void> {
  await migrate(db.sql, dir)
  await seedLedger(db.sql, { rows: 900, from: iso(month(-3)), days: Math.round((TODAY - month(-3)) / DAY) })
  await db.sql`select usage_rollup_compact()`
  // Today's rows, and more of last month's, left as deltas: readers must add them.
  await seedLedger(db.sql, { rows: 120, from: iso(TODAY), days: 1, seed: 11 })
  await seedLedger(db.sql, { rows: 60, from: iso(month(-1)), days: 20, seed: 12 })
}

const RANGES: Array<[string, string, string]> = [
  ['whole months only', iso(month(-3)), iso(M)],
  ['whole months and the current month up to tomorrow', iso(month(-3)), iso(TOMORROW)],
  ['partial month, whole months, partial month', iso(month(-3) + 9 * DAY), iso(month(-1) + 4 * DAY)],
  ['partial month, a whole month, the current month to tomorrow', iso(month(-2) + 2 * DAY), iso(TOMORROW)],
  ['within one month', iso(month(-1) + 1 * DAY), iso(month(-1) + 19 * DAY)],
  ['across a month end, no whole month', iso(month(-1) - 5 * DAY), iso(month(-1) + 5 * DAY)],
  ['this month (the page default)', iso(M), iso(month(1))],
  ['today only', iso(TODAY), iso(TOMORROW)],
]

t.test('wholeMonths: the calendar months wholly inside [from, to)', async (t) => {
  t.same(wholeMonths('2026-01-01', '2026-04-01'), ['2026-01-01', '2026-04-01'])
  t.same(wholeMonths('2026-01-02', '2026-04-01'), ['2026-02-01', '2026-04-01'])
  t.same(wholeMonths('2025-12-31', '2026-03-15'), ['2026-01-01', '2026-03-01'])
  t.same(wholeMonths('2026-01-01T00:00:00.000Z', '2026-02-01T00:00:00Z'), ['2026-01-01', '2026-02-01'])
  t.equal(wholeMonths('2026-01-02', '2026-02-01'), null)
  t.equal(wholeMonths('2026-01-15', '2026-02-14'), null)
  t.equal(wholeMonths('2026-01-01', '2026-01-31'), null)
})

/**
 * The seeded database of the next two tests, made once: the first only reads it, the second
 * reads it the same way before it corrupts it, so neither depends on the other having run.
 */
let shared: Promise<TestDb> | null = null
const sharedSeeded = (): Promise<TestDb> => {
  shared ??= (async () => { const db = await createTestDb({ migrated: true }); await seeded(db); return db })()
  return shared
}
t.teardown(async () => { if (shared) await (await shared).drop() })

t.test('every grouping, every range, every user filter: the monthly path gives the digits of usage_events', async (t) => {
  const db = await sharedSeeded()
  const [{ deltas }] = await db.sql`select count(*)::int as deltas from usage_rollup_deltas`
  t.ok(deltas > 0, 'some sums are still deltas, not folded')
  const [{ n: folded }] = await db.sql`select count(*)::int as n from usage_monthly_rollups`
  t.ok(folded > 0, 'the compaction folded the deltas into the monthly rollups')
  t.equal(await sumsSource(db.sql, { organizationId: ORG, from: iso(M), to: iso(month(1)) }), 'monthly')
  for (const [name, from, to] of RANGES) {
    for (const user of [undefined, externalUserId(ORG, 'u-anna'), ORG]) {
      const p: Period = { organizationId: ORG, from, to, externalUserId: user }
      const who = user === undefined ? '' : user === ORG ? ', no user' : ', one user'
      for (const g of GROUP_BYS.filter((g) => g !== 'outcome')) {
        const raw = await usageByGroup(db.sql, p, g, 'events')
        t.same([...await usageByGroup(db.sql, p, g, 'monthly')], [...raw], `${name}${who}: group_by=${g}`)
      }
      t.same(await usageTotals(db.sql, p, 'monthly'), await usageTotals(db.sql, p, 'events'), `${name}${who}: totals`)
    }
  }
  for (const m of [-3, -2, -1, 0]) {
    const raw = await statementLines(db.sql, undefined, iso(month(m)), iso(month(m + 1)), 'events')
    t.same([...await statementLines(db.sql, undefined, iso(month(m)), iso(month(m + 1)), 'monthly')], [...raw], `statement lines, month ${m}`)
  }
  t.ok((await usageByGroup(db.sql, { organizationId: ORG, from: iso(TODAY), to: iso(TOMORROW) }, 'day', 'events')).length === 1, 'today has rows')
})

t.test('the coarse tables are what is read: a corrupted row shows (so the digits above came from them)', async (t) => {
  const db = await sharedSeeded()
  await db.sql`select usage_rollup_compact()`
  const year: Period = { organizationId: ORG, from: iso(month(-3)), to: iso(TOMORROW) }
  const before = await usageTotals(db.sql, year, 'monthly')
  t.same(before, await usageTotals(db.sql, year, 'events'))
  const [m] = await db.sql`update usage_monthly_rollups set requests = requests + 1000
    where ctid = (select ctid from usage_monthly_rollups where organization_id = ${ORG} and month = ${iso(month(-2))}::date limit 1) returning model`
  const models = await usageByGroup(db.sql, year, 'model', 'monthly')
  t.equal(models.find((r) => r.key === (m.model === '' ? null : m.model))!.requests,
    (await usageByGroup(db.sql, year, 'model', 'events')).find((r) => r.key === (m.model === '' ? null : m.model))!.requests + 1000,
    'group_by=model over whole months reads usage_monthly_rollups')
  await db.sql`update usage_org_daily_rollups set requests = requests + 7
    where ctid = (select ctid from usage_org_daily_rollups where organization_id = ${ORG} and day >= ${iso(month(-1))}::date order by day limit 1)`
  t.equal((await usageTotals(db.sql, year, 'monthly')).requests, before.requests + 7, 'the totals read usage_org_daily_rollups')
  const days = await usageByGroup(db.sql, year, 'day', 'monthly')
  t.equal(days.reduce((a, r) => a + r.requests, 0), before.requests + 7, 'so does group_by=day')
  const anna: Period = { ...year, externalUserId: externalUserId(ORG, 'u-anna') }
  t.same([...await usageByGroup(db.sql, anna, 'day', 'monthly')], [...await usageByGroup(db.sql, anna, 'day', 'events')],
    'one user\'s days come from the daily rollups, untouched')
})

t.test('migration 009 fills the monthly and per-organization day rollups from what 007 already holds', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  const upTo008 = mkdtempSync(join(tmpdir(), 'sql-008-'))
  for (const f of readdirSync('sql').filter((f) => /^\d+_.*\.sql$/.test(f) && Number(f.slice(0, 3)) <= 8)) cpSync(join('sql', f), join(upTo008, f))
  await seeded(db, upTo008)
  t.equal((await db.sql`select to_regclass('usage_monthly_rollups') as r`)[0].r, null, 'not there before 009')
  const { applied } = await migrate(db.sql, 'sql')
  t.ok(applied.some((f) => f.startsWith('009_')), `applied ${applied.join(', ')}`)
  const [{ same }] = await db.sql`
    select not exists (
      (select organization_id, date_trunc('month', day::timestamp)::date, external_user_id, model, kind, sum(requests), sum(cost_usd), sum(billed_cost_usd),
              sum(total_tokens), max(user_id) from usage_daily_rollups group by 1, 2, 3, 4, 5
       except
       select organization_id, month, external_user_id, model, kind, requests, cost_usd, billed_cost_usd, total_tokens, user_id from usage_monthly_rollups)
      union all
      (select organization_id, month, external_user_id, model, kind, requests, cost_usd, billed_cost_usd, total_tokens, user_id from usage_monthly_rollups
       except
       select organization_id, date_trunc('month', day::timestamp)::date, external_user_id, model, kind, sum(requests), sum(cost_usd), sum(billed_cost_usd),
              sum(total_tokens), max(user_id) from usage_daily_rollups group by 1, 2, 3, 4, 5)) as same`
  t.ok(same, 'usage_monthly_rollups = the daily rollups summed per month')
  const [{ n }] = await db.sql`select count(*)::int as n from usage_org_daily_rollups`
  const [{ k }] = await db.sql`select count(distinct (organization_id, day, kind))::int as k from usage_daily_rollups`
  t.equal(n, k, 'one per-organization day row per organization, day and kind')
  const p: Period = { organizationId: ORG, from: iso(month(-3)), to: iso(TOMORROW) }
  for (const g of GROUP_BYS.filter((g) => g !== 'outcome')) {
    t.same([...await usageByGroup(db.sql, p, g, 'monthly')], [...await usageByGroup(db.sql, p, g, 'events')], `group_by=${g}, deltas not folded yet`)
  }
  t.same((await verifyRollups(db.sql)).differences, [], 'verify: clean before the next compaction')
  t.ok(await compactRollups(db.sql) as number > 0, 'the new compaction folds the deltas left by the old one')
  const v = await verifyRollups(db.sql)
  t.same(v.differences, [], 'verify: clean after it')
  t.ok(v.monthlyRows! > 0 && v.orgDailyRows! > 0)
  for (const g of GROUP_BYS.filter((g) => g !== 'outcome')) {
    t.same([...await usageByGroup(db.sql, p, g, 'monthly')], [...await usageByGroup(db.sql, p, g, 'events')], `group_by=${g}, all folded`)
  }
})

t.test('verify names a corrupted monthly row and a corrupted per-organization day row, each as itself', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await seeded(db)
  const env = { DATABASE_URL: db.url }
  let text = ''
  const out = (s: string): void => { text += s }
  t.equal(await runVerify([], env, out, out), 0, text)
  t.match(text, /monthly and \d+ per-organization day rows match their days/)
  const last = iso(month(-1)).slice(0, 7)
  const [row] = await db.sql`update usage_monthly_rollups set cost_usd = cost_usd + 0.000000000001
    where ctid = (select ctid from usage_monthly_rollups where month = ${iso(month(-1))}::date limit 1) returning external_user_id, model, kind`
  const v = await verifyRollups(db.sql, { month: last })
  t.equal(v.differences.length, 1, 'one difference: the monthly row; its daily rows are right')
  t.match(v.differences[0], { rollup: 'monthly', organizationId: ORG, day: iso(month(-1)), externalUserId: row.external_user_id, model: row.model, kind: row.kind })
  t.same(Object.keys(v.differences[0].values), ['cost_usd'])
  text = ''
  t.equal(await runVerify(['--month', last], env, out, out), 1, 'exit 1')
  t.match(text, new RegExp(`${ORG} month ${last} user=\\S+ model=\\S+ kind=\\S+: cost_usd: monthly rollup \\d\\.\\d+ != its days \\d\\.\\d+`))
  await db.sql`update usage_monthly_rollups set cost_usd = cost_usd - 0.000000000001
    where month = ${iso(month(-1))}::date and external_user_id = ${row.external_user_id} and model = ${row.model} and kind = ${row.kind}`
  t.same((await verifyRollups(db.sql, { month: last })).differences, [], 'clean again')

  // A row that exists only in the monthly table (no day of it anywhere) is named too.
  await db.sql`insert into usage_monthly_rollups values (${ORG}, ${iso(month(-2))}, 'ghost', 'm', 'chat', 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, null)`
  const ghost = (await verifyRollups(db.sql)).differences
  t.equal(ghost.length, 1)
  t.match(ghost[0], { rollup: 'monthly', externalUserId: 'ghost', values: { requests: ['1', null] } })
  await db.sql`delete from usage_monthly_rollups where external_user_id = 'ghost'`

  await db.sql`update usage_org_daily_rollups set requests = requests + 1
    where ctid = (select ctid from usage_org_daily_rollups where day = (select min(day) from usage_org_daily_rollups) limit 1)`
  const d = (await verifyRollups(db.sql)).differences
  t.equal(d.length, 1)
  t.match(d[0], { rollup: 'org_daily', organizationId: ORG, externalUserId: '', model: '' })
  t.same(Object.keys(d[0].values), ['requests'])
  text = ''
  t.equal(await runVerify([], env, out, out), 1)
  t.match(text, /\(organization's day\) kind=\S+: requests: org_daily rollup \d+ != its days \d+/)

  await db.sql`update usage_org_daily_rollups set requests = requests - 1
    where organization_id = ${d[0].organizationId} and day = ${d[0].day}::date and kind = ${d[0].kind}`

  // A corrupted daily row is named as a daily row only: the coarse tables are checked against the raw rows.
  await db.sql`update usage_daily_rollups set billed_cost_usd = billed_cost_usd + 1
    where ctid = (select ctid from usage_daily_rollups where day >= ${iso(month(-2))}::date limit 1)`
  const daily = (await verifyRollups(db.sql)).differences
  t.same(daily.map((x) => x.rollup), ['daily'])
})

t.test('verify where retention dropped the raw rows: the coarse tables against the daily rollups', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await seeded(db)
  await db.sql`select usage_rollup_compact()`
  for (const m of [-3, -2, -1]) await db.sql`select usage_ensure_partition(${iso(month(m))}::date)`
  const dropped = await db.sql`select usage_drop_partitions_before(${iso(month(-1))}::date) as d`
  t.ok(dropped[0].d.length > 0, `dropped ${dropped[0].d}`)
  const v = await verifyRollups(db.sql)
  t.same(v.differences, [])
  t.ok(v.from! >= iso(month(-1)), 'raw rows compared from the oldest partition left')
  await db.sql`update usage_monthly_rollups set requests = requests + 2
    where ctid = (select ctid from usage_monthly_rollups where month = ${iso(month(-3))}::date limit 1)`
  const d = (await verifyRollups(db.sql)).differences
  t.equal(d.length, 1, 'a month without raw rows is checked against its daily rollups')
  t.match(d[0], { rollup: 'monthly', day: iso(month(-3)) })
})

t.test('events?model=: the rows asked for the model or served by it, newest first, page after page', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await seedLedger(db.sql, { rows: 400, from: iso(month(-1)), days: 28 })
  // Requests for a router model answered by another model, requests for a model answered by the
  // router's choice, and rows sharing one instant (the cursor's tie on event_id).
  await db.sql`update usage_events set model = 'openrouter/auto', served_model = 'openai/gpt-4o'
    where event_id in (select event_id from usage_events where model = 'openai/gpt-4o' order by event_id limit 40)`
  await db.sql`update usage_events set served_model = 'anthropic/claude-sonnet-4'
    where event_id in (select event_id from usage_events where model = 'google/gemini-2.5-flash' order by event_id limit 25)`
  await db.sql`update usage_events set served_model = model where event_id in (select event_id from usage_events where served_model is null order by event_id limit 30)`
  await db.sql`update usage_events set created_at = ${new Date(month(-1) + 3 * DAY).toISOString()}::timestamptz
    where event_id in (select event_id from usage_events order by event_id limit 60)`
  const fake = await new FakeOpenRouter().start()
  const key = 'admin-key-0123456789abcdef'
  const on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: key }))
  t.teardown(async () => { await on.sidecar.stop('test end'); await fake.close() })
  const from = iso(month(-1))
  const to = iso(M)
  for (const model of ['openai/gpt-4o', 'openrouter/auto', 'anthropic/claude-sonnet-4', 'google/gemini-2.5-flash', 'no/such-model']) {
    const expected = (await db.sql`select event_id::text as id from usage_events
      where organization_id = ${ORG} and created_at >= ${from}::timestamptz and created_at < ${to}::timestamptz
        and (model = ${model} or served_model = ${model})
      order by created_at desc, event_id desc`).map((r) => r.id)
    if (model !== 'no/such-model') t.ok(expected.length > 20, `${model}: ${expected.length} rows`)
    const got: string[] = []
    let cursor: string | null = null
    let pages = 0
    do {
      const res = await request(`${on.url}/admin/v1/events?from=${from}&to=${to}&model=${encodeURIComponent(model)}&limit=9${cursor ? `&cursor=${cursor}` : ''}`,
        { headers: { authorization: `Bearer ${key}` } })
      t.equal(res.statusCode, 200)
      const body = await res.body.json() as { data: Array<{ event_id: string, model: string, served_model: string | null }>, next_cursor: string | null, has_more: boolean }
      for (const r of body.data) t.ok(r.model === model || r.served_model === model, `${r.event_id} is ${model}`)
      got.push(...body.data.map((r) => r.event_id))
      cursor = body.next_cursor
      pages++
    } while (cursor && pages < 100)
    t.same(got, expected, `${model}: every row once, newest first, across ${pages} pages`)
    const csv = await request(`${on.url}/admin/v1/events?from=${from}&to=${to}&model=${encodeURIComponent(model)}&limit=1000&format=csv`,
      { headers: { authorization: `Bearer ${key}` } })
    const lines = (await csv.body.text()).trim().split('\n')
    t.equal(lines.length - 1, expected.length, `${model}: CSV has the same rows`)
  }
  // With another filter too: the outcome and the user apply to both scans.
  const anna = externalUserId(ORG, 'u-anna')
  const expected = (await db.sql`select event_id::text as id from usage_events
    where organization_id = ${ORG} and external_user_id = ${anna} and outcome = 'ok' and created_at >= ${from}::timestamptz and created_at < ${to}::timestamptz
      and (model = 'openai/gpt-4o' or served_model = 'openai/gpt-4o') order by created_at desc, event_id desc`).map((r) => r.id)
  const res = await request(`${on.url}/admin/v1/events?from=${from}&to=${to}&model=openai/gpt-4o&user=u-anna&outcome=ok&limit=1000`,
    { headers: { authorization: `Bearer ${key}` } })
  t.same((await res.body.json() as { data: Array<{ event_id: string }> }).data.map((r) => r.event_id), expected)
})
