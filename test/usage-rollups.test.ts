import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { baseEnv, startSidecar } from './support/sidecar.js'
import { parseCsv } from './support/csv.js'
import { sameDecimal } from '../src/lib/decimal.js'
import { join } from 'node:path'
import { createTestDb, type TestDb } from './support/db.js'
import { ORG, seedLedger } from './support/seed.js'
import { migrate } from '../src/db/migrate.js'
import { GROUP_BYS, statementLines, sumsSource, usageByGroup, usageTotals, type Period } from '../src/usage/reports/usage-report.js'
import { externalUserId } from '../src/identity/external-id.js'
import { buildStatement } from '../src/usage/reports/statement.js'
import { totalsOf } from '../src/usage/reports/totals.js'

// Whole days are read from the daily rollups (migration 007, usage_daily_totals); they must give
// the same rows, digit for digit, as usage_events. The migration's trigger fills them while the
// ledger is seeded.

let db: TestDb
const P: Period = { organizationId: ORG, from: '2026-10-01', to: '2026-11-01' }

t.before(async () => {
  db = await createTestDb()
  await migrate(db.sql, join(process.cwd(), 'sql'))
  await seedLedger(db.sql, { rows: 700, from: '2026-09-20', days: 50 })
  // Migration 007's trigger wrote the sums as deltas; fold them so the rollup table itself is read too.
  await db.sql`select usage_rollup_compact()`
})
t.teardown(() => db?.drop())

t.test('the source: rollups for whole days (monthly ones where they exist), usage_events for partial days', async (t) => {
  t.equal(await sumsSource(db.sql, P), 'monthly')
  t.equal(await sumsSource(db.sql, { ...P, from: '2026-10-01T00:00:00.000Z' }), 'monthly')
  t.equal(await sumsSource(db.sql, { ...P, from: '2026-10-01T12:00:00.000Z' }), 'events')
})

t.test('every grouping and the totals: the same digits from both sources', async (t) => {
  for (const user of [undefined, externalUserId(ORG, 'u-anna'), ORG]) {
    const p = { ...P, externalUserId: user }
    for (const g of GROUP_BYS.filter((g) => g !== 'outcome')) {
      const raw = await usageByGroup(db.sql, p, g, 'events')
      if (g !== 'group' || user !== ORG) t.ok(raw.length > 0, `${g} ${user ?? ''}: rows`) // requests without a user are in no group
      for (const source of ['rollups', 'monthly'] as const) {
        t.same([...await usageByGroup(db.sql, p, g, source)], [...raw], `group_by=${g}${user ? ` for ${user}` : ''} from ${source}`)
      }
      // Group rows overlap (a row in two groups is in both): their sum is not the totals.
      if (g !== 'group') t.same(totalsOf(raw), await usageTotals(db.sql, p, 'events'), `the sum of the ${g} rows is the totals, to the digit`)
    }
    // One group's rows, every grouping, from the group rollups and from usage_events.
    for (const g of GROUP_BYS.filter((g) => g !== 'outcome')) {
      const inSales = { ...p, group: 'Sales' }
      const raw = await usageByGroup(db.sql, inSales, g, 'events')
      for (const source of ['rollups', 'monthly'] as const) {
        t.same([...await usageByGroup(db.sql, inSales, g, source)], [...raw], `group_by=${g}&group=Sales${user ? ` for ${user}` : ''} from ${source}`)
      }
      t.same(await usageTotals(db.sql, inSales, 'monthly'), await usageTotals(db.sql, inSales, 'events'), `totals of Sales${user ? ` for ${user}` : ''}`)
    }
    t.same(await usageTotals(db.sql, p, 'rollups'), await usageTotals(db.sql, p, 'events'), 'totals')
    t.same(await usageTotals(db.sql, p, 'monthly'), await usageTotals(db.sql, p, 'events'), 'totals from the monthly rollups')
  }
})

t.test('statement lines from the rollups equal those from usage_events; the check still reads usage_events', async (t) => {
  const raw = await statementLines(db.sql, undefined, '2026-10-01', '2026-11-01', 'events')
  const rolled = await statementLines(db.sql, undefined, '2026-10-01', '2026-11-01', 'rollups')
  t.same([...rolled], [...raw])
  t.same([...await statementLines(db.sql, undefined, '2026-10-01', '2026-11-01', 'monthly')], [...raw], 'and from the monthly rollups')
  const s = await buildStatement(db.sql, ORG, '2026-10')
  t.equal(s.organizations[0].lines.length, raw.length)
  // A rollup that drifted from the raw rows is caught, not printed. A whole month is read from the
  // monthly rollups.
  const [drift] = await db.sql`update usage_monthly_rollups set billed_cost_usd = billed_cost_usd + 0.000001
    where ctid = (select ctid from usage_monthly_rollups where month = '2026-10-01' limit 1) returning month, external_user_id, model, kind`
  await t.rejects(buildStatement(db.sql, ORG, '2026-10'), /does not add up/)
  await db.sql`update usage_monthly_rollups set billed_cost_usd = billed_cost_usd - 0.000001
    where month = ${drift.month} and external_user_id = ${drift.external_user_id} and model = ${drift.model} and kind = ${drift.kind}`
  await buildStatement(db.sql, ORG, '2026-10')
})

t.test('group_by=outcome: the rollup totals minus the rows that did not end ok, equal to usage_events by value', async (t) => {
  const fake = await new FakeOpenRouter().start()
  const key = 'admin-key-0123456789abcdef'
  const on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: key }))
  t.teardown(async () => { await on.sidecar.stop('test end'); await fake.close() })
  for (const user of [undefined, 'u-bob']) {
    const q = `from=${P.from}&to=${P.to}&group_by=outcome${user ? `&user=${user}` : ''}`
    const res = await request(`${on.url}/admin/v1/usage?${q}`, { headers: { authorization: `Bearer ${key}` } })
    const body = await res.body.json() as { data: Array<Record<string, string | number>>, totals: Record<string, string | number> }
    const raw = await usageByGroup(db.sql, { ...P, externalUserId: user && externalUserId(ORG, user) }, 'outcome', 'events')
    t.same(body.data.map((r) => r.outcome), raw.map((r) => r.key), 'the same outcomes, most requests first')
    for (const r of raw) {
      const got = body.data.find((x) => x.outcome === r.key)!
      t.equal(got.requests, r.requests)
      for (const c of ['total_tokens', 'cost_usd', 'billed_cost_usd'] as const) t.ok(sameDecimal(String(got[c]), r[c]), `${r.key} ${c}: ${got[c]} = ${r[c]}`)
    }
    const csv = await request(`${on.url}/admin/v1/usage?${q}&format=csv`, { headers: { authorization: `Bearer ${key}` } })
    const [header, ...rows] = parseCsv(await csv.body.text())
    t.same(rows.map((r) => r[header.indexOf('billed_cost_usd')]), body.data.map((r) => r.billed_cost_usd), 'CSV = JSON')
  }
})
