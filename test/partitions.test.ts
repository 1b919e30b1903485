import t from 'tap'
import { copyFileSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { createTestDb, type TestDb } from './support/db.js'
import { createLogger } from '../src/lib/log.js'
import { migrate } from '../src/db/migrate.js'
import { maintainPartitions, monthStart } from '../src/db/partitions.js'
import { Ledger } from '../src/usage/ledger/ledger.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'
import { verifyRollups } from '../src/usage/reports/verify.js'
import { compactRollups } from '../src/usage/ledger/rollups.js'

// Migration 007 and what hangs on it: the in-place conversion of a database filled by the
// schema before it, replays across month boundaries, partition maintenance and retention.

const log = createLogger('silent')
const PARTITIONED = '007_partitions_rollups.sql'

/**
 * A directory with every migration before 007: the schema an existing database has today, plus
 * what a later-numbered sibling migration might add to usage_events before 007 runs (a column,
 * an index, a trigger, a view on it and one on a billing view): the conversion must keep it all.
 */
function schemaBefore (): string {
  const dir = mkdtempSync(join(tmpdir(), 'sql-before-'))
  for (const f of readdirSync('sql')) if (/^\d+_.*\.sql$/.test(f) && f < PARTITIONED) copyFileSync(join('sql', f), join(dir, f))
  writeFileSync(join(dir, '006_zz_sibling.sql'), `
    ALTER TABLE usage_events ADD COLUMN note text;
    CREATE INDEX usage_events_note ON usage_events (note);
    CREATE TABLE notes_seen (event_id uuid, note text);
    CREATE FUNCTION note_seen () RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN INSERT INTO notes_seen VALUES (NEW.event_id, NEW.note); RETURN NEW; END $$;
    CREATE TRIGGER usage_events_note_seen AFTER INSERT ON usage_events FOR EACH ROW EXECUTE FUNCTION note_seen();
    CREATE VIEW notes_per_org AS SELECT organization_id, count(note) AS notes FROM usage_events GROUP BY 1;
    CREATE VIEW busy_days AS SELECT * FROM spend_per_day WHERE requests > 1;`)
  return dir
}

const rec = (i: number, over: Partial<UsageRecord> = {}): UsageRecord => ({
  eventId: randomUUID(), generationId: `gen-part-${i}`, organizationId: 'org_a', userId: `user-${i % 3}`, externalUserId: `org_a_u${i % 3}`,
  endpoint: 'chat/completions', model: `vendor/m${i % 2}`, servedModel: `vendor/m${i % 2}`, provider: 'p', streamed: false, status: 200, outcome: 'ok',
  finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: 10 + i, completionTokens: 5, totalTokens: 15 + i,
  cachedTokens: 1, reasoningTokens: 0, costUsd: `0.000${i}7300000000000000001`, upstreamCostUsd: null, isByok: false,
  markupPercent: '12.5', latencyMs: 1.5, ttfbMs: 0.5, chatId: null, kind: 'chat', messageId: null, createdAt: new Date().toISOString(),
  ...over,
})

async function orgs (db: TestDb): Promise<void> {
  await db.sql`insert into organizations (id, name, markup_percent) values ('org_a', 'A', 12.5), ('org_b', 'B', 0), ('org_c', 'C', 7.25)`
}

async function writeAll (db: TestDb, records: UsageRecord[]): Promise<void> {
  const ledger = new Ledger(db.sql, null, log, { batchSize: 50, flushMs: 1 })
  for (const r of records) ledger.record(r)
  if (!await ledger.drain(10_000)) throw new Error('ledger did not drain')
  ledger.close()
}

const totals = (db: TestDb) => db.sql`select organization_id, count(*)::int as n, sum(cost_usd)::text as cost,
  sum(billed_cost_usd)::text as billed, sum(prompt_tokens)::text as prompt from usage_events group by 1 order by 1`
// Amounts without trailing zeros: later migrations show the views' sums trimmed (the same numbers).
const trimmed = (rows: Array<Record<string, unknown>>) => rows.map((r) => ({ ...r,
  cost_usd: String(r.cost_usd).replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, ''),
  billed_cost_usd: String(r.billed_cost_usd).replace(/(\.\d*?)0+$/, '$1').replace(/\.$/, '') }))
const views = async (db: TestDb) => ({
  user: trimmed(await db.sql`select * from spend_per_user_month order by organization_id, month, external_user_id, kind`),
  model: trimmed(await db.sql`select * from spend_per_model_month order by organization_id, month, model nulls first, kind`),
  day: trimmed(await db.sql`select * from spend_per_day order by organization_id, day, kind`),
})

t.test('an existing database converts in place: every row kept, totals and billing views equal to the last digit', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  await migrate(db.sql, schemaBefore())
  await orgs(db)
  await db.sql`insert into user_mappings (organization_id, user_id, external_user_id, user_name) values ('org_a', 'user-1', 'org_a_u1', 'Ada')`
  // 14 months of rows for three organizations: odd costs, no cost at all, no model, failures.
  const records: UsageRecord[] = []
  for (let i = 0; i < 420; i++) {
    const org = ['org_a', 'org_b', 'org_c'][i % 3]
    records.push(rec(i, {
      organizationId: org,
      externalUserId: `${org}_u${i % 5}`,
      generationId: i % 17 === 0 ? null : `gen-conv-${i}`,
      costUsd: i % 11 === 0 ? null : `0.${String(i * 7919).padStart(9, '0')}123456789012345678`,
      markupPercent: ['12.5', '0', '7.25'][i % 3],
      model: i % 13 === 0 ? null : `vendor/m${i % 4}`,
      servedModel: i % 13 === 0 ? null : `vendor/m${i % 4}`,
      outcome: i % 9 === 0 ? 'upstream_error' : 'ok',
      kind: i % 4 === 0 ? 'title_generation' : 'chat',
      createdAt: new Date(Date.UTC(2025, 9, 1) + i * 25 * 3600_000 + (i % 2 === 0 ? -1 : 1)).toISOString(),
    }))
  }
  // Today's ledger writes columns (migrations 012 and 017) the old schema does not have: it lends
  // them for the write and takes them back, so the conversion meets the old tables as they were.
  await db.sql`alter table usage_events add column estimated_cost_usd numeric, add column groups text[] not null default '{}', add column api_key_id text`
  await db.sql`alter table user_mappings add column groups text[] not null default '{}'`
  await writeAll(db, records)
  await db.sql`alter table usage_events drop column estimated_cost_usd, drop column groups, drop column api_key_id`
  await db.sql`alter table user_mappings drop column groups`
  await db.sql`update usage_events set note = 'n' || prompt_tokens where prompt_tokens % 2 = 0`
  const before = await totals(db)
  const viewsBefore = await views(db)
  const siblingBefore = { notes: await db.sql`select * from notes_per_org order by 1`, busy: await db.sql`select * from busy_days order by 1, 2, 3` }
  t.equal(before.reduce((n, r) => n + r.n, 0), 420)

  const migrated = await migrate(db.sql, 'sql')
  t.ok(migrated.applied.includes(PARTITIONED), 'migration 007 applied')
  t.same(await totals(db), before, 'per-organization counts and sums identical, digit for digit')
  t.same(await views(db), viewsBefore, 'the billing views answer exactly as before, now from the rollups')
  const [{ kind }] = await db.sql`select relkind::text as kind from pg_class where relname = 'usage_events'`
  t.equal(kind, 'p', 'usage_events is partitioned')
  const parts = await db.sql`select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'usage_events'::regclass order by 1`
  const names = parts.map((p) => p.relname)
  t.ok(names.includes('usage_events_2025_10') && names.includes('usage_events_2026_11') && names.includes('usage_events_default'), names.join(' '))
  t.ok(names.includes(`usage_events_${monthStart(new Date(), 2).slice(0, 7).replace('-', '_')}`), 'partitions two months ahead')
  const [{ n: inDefault }] = await db.sql`select count(*)::int as n from usage_events_default`
  t.equal(inDefault, 0, 'every old row sits in its month')
  const v = await verifyRollups(db.sql)
  t.same(v.differences, [], 'rollups built by the conversion match the raw rows')
  t.equal(v.rawRows, 420)

  // The conversion keeps the ledger's semantics: a replay of an old record changes nothing.
  await writeAll(db, [records[1], { ...records[2], eventId: randomUUID() }])
  t.same(await totals(db), before, 'replays of converted rows are no-ops')
  t.same({ notes: await db.sql`select * from notes_per_org order by 1`, busy: await db.sql`select * from busy_days order by 1, 2, 3` }, siblingBefore,
    'views of other migrations kept, on the new table (a view on a billing view included)')
  const [{ indexed }] = await db.sql`select count(*)::int as indexed from pg_indexes where tablename = 'usage_events' and indexname = 'usage_events_note'`
  t.equal(indexed, 1, 'their index kept')
  const seen = await db.sql`select count(*)::int as n from notes_seen`
  await writeAll(db, [rec(9999, { organizationId: 'org_b', externalUserId: 'org_b_u1', generationId: 'gen-after' })])
  t.equal((await db.sql`select count(*)::int as n from notes_seen`)[0].n, seen[0].n + 1, 'their trigger kept')
  const again = await migrate(db.sql, 'sql')
  t.same(again.applied, [], 'runs once')
})

t.test('replays are idempotent across month boundaries: 23:59:59.999 on the last day, replayed after midnight', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await orgs(db)
  await maintainPartitions(db.sql, { now: new Date('2025-12-15T12:00:00Z'), force: true })
  await maintainPartitions(db.sql, { now: new Date('2026-01-15T12:00:00Z'), force: true })
  const edges = [
    rec(1, { createdAt: '2025-12-31T23:59:59.999Z' }), // last instant of a year
    rec(2, { createdAt: '2026-01-31T23:59:59.999Z' }),
    rec(3, { createdAt: '2026-02-28T23:59:59.999Z' }),
    rec(4, { createdAt: '2026-01-01T00:00:00.000Z' }),
    rec(5, { createdAt: '2026-03-31T23:59:59.999Z', generationId: null }), // replay key: event_id
  ]
  await writeAll(db, edges)
  const first = await totals(db)
  // The same records again (a journal replay after a crash), and each generation recorded anew
  // after midnight with a fresh event id (as a reconciliation finishing in the next month would).
  const afterMidnight = edges.filter((r) => r.generationId).map((r) => ({
    ...r, eventId: randomUUID(), createdAt: new Date(Date.parse(r.createdAt) + 2).toISOString(), outcome: 'interrupted' as const,
  }))
  await writeAll(db, [...edges, ...afterMidnight])
  // Two writers replaying the same batch at the same moment.
  await Promise.all([writeAll(db, [...edges, ...afterMidnight]), writeAll(db, [...afterMidnight, ...edges])])
  t.same(await totals(db), first, 'nothing added by any replay')
  const rows = await db.sql`select tableoid::regclass::text as part, generation_id, outcome, created_at from usage_events order by created_at`
  t.same(rows.map((r) => [r.part, r.outcome]), [
    ['usage_events_2025_12', 'ok'], ['usage_events_2026_01', 'ok'], ['usage_events_2026_01', 'ok'],
    ['usage_events_2026_02', 'ok'], ['usage_events_2026_03', 'ok'],
  ], 'each record once, in the month it was created, the first copy kept')
  const [{ ids }] = await db.sql`select count(*)::int as ids from usage_generation_ids`
  t.equal(ids, 4, 'one claimed id per generation')
  t.same((await verifyRollups(db.sql)).differences, [], 'rollups counted each record once')
  const [{ requests }] = await db.sql`select sum(requests)::int as requests from usage_daily_totals`
  t.equal(requests, 5)
  // The deltas each insert appended are folded into the rollups exactly once, by one caller.
  const [{ deltas }] = await db.sql`select count(*)::int as deltas from usage_rollup_deltas`
  t.ok(deltas > 0, 'inserts appended deltas')
  const totalsBefore = await db.sql`select * from usage_daily_totals order by day`
  const folds = await Promise.all([compactRollups(db.sql), compactRollups(db.sql), compactRollups(db.sql)])
  t.equal(folds.filter((n) => n !== null).length >= 1, true)
  t.equal((await db.sql`select count(*)::int as n from usage_rollup_deltas`)[0].n, 0, 'every delta folded')
  t.same(await db.sql`select * from usage_daily_totals order by day`, totalsBefore, 'folding changes no total')
  t.same(await db.sql`select * from usage_daily_rollups order by day`, totalsBefore, 'the rollups alone now hold them')
  t.same((await verifyRollups(db.sql)).differences, [])
})

t.test('maintenance: partitions ahead, once a day by one caller, rows from the default moved, retention drops whole months', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await orgs(db)
  // Rows far in the future land in the default partition: an insert never fails for want of one.
  await writeAll(db, [rec(1, { createdAt: '2031-03-10T10:00:00Z' }), rec(2, { createdAt: '2031-04-02T10:00:00Z' }), rec(3, { createdAt: '2031-08-02T10:00:00Z' })])
  const [{ n }] = await db.sql`select count(*)::int as n from usage_events_default`
  t.equal(n, 3)

  const now = new Date('2031-03-20T08:00:00Z')
  const runs = await Promise.all(Array.from({ length: 5 }, () => maintainPartitions(db.sql, { now })))
  t.equal(runs.filter((r) => r.ran).length, 1, 'five replicas at once: one ran')
  t.same(runs.find((r) => r.ran)!.created, ['usage_events_2031_03', 'usage_events_2031_04', 'usage_events_2031_05'])
  t.same((await maintainPartitions(db.sql, { now: new Date('2031-03-20T23:00:00Z') })).ran, false, 'not again the same day')
  const placed = await db.sql`select tableoid::regclass::text as part from usage_events order by created_at`
  t.same(placed.map((r) => r.part), ['usage_events_2031_03', 'usage_events_2031_04', 'usage_events_default'], 'rows moved out of the default')
  t.same((await verifyRollups(db.sql)).differences, [], 'moving rows neither lost nor doubled a rollup')

  // A replay of a moved record is still a no-op.
  await writeAll(db, [rec(1, { createdAt: '2031-03-10T10:00:00Z' })])
  t.equal((await db.sql`select count(*)::int as n from usage_events`)[0].n, 3)

  // Retention: 2 months kept besides the current one, in July 2031: March and April go.
  await compactRollups(db.sql)
  const beforeRollups = await db.sql`select * from usage_daily_rollups order by day`
  const older = (await db.sql`select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'usage_events'::regclass and c.relname < 'usage_events_2031_05' and c.relname ~ '_\\d{4}_\\d{2}$' order by 1`).map((r) => r.relname)
  t.ok(older.includes('usage_events_2031_03') && older.includes('usage_events_2031_04'))
  const kept = await maintainPartitions(db.sql, { now: new Date('2031-07-01T00:30:00Z'), retentionMonths: 2 })
  t.same(kept.dropped, older, 'every month that ended before May 2031 dropped, March and April included')
  t.same(kept.created, ['usage_events_2031_07', 'usage_events_2031_08', 'usage_events_2031_09'])
  t.same(await db.sql`select * from usage_daily_rollups order by day`, beforeRollups, 'rollups untouched by retention')
  t.equal((await db.sql`select count(*)::int as n from usage_events`)[0].n, 1, 'only the August row remains')
  t.same((await db.sql`select generation_id from usage_generation_ids order by 1`).map((r) => r.generation_id), ['gen-part-3'],
    'the claimed ids of dropped rows are forgotten with them')
  const v = await verifyRollups(db.sql)
  t.same(v.differences, [], 'verify compares only the months whose raw rows are kept')
  t.equal(v.from, '2031-05-01')
})

t.test('the claim without a conflict: an id new to the database but twice in one statement is kept once, its first row by event id', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await orgs(db)
  // One statement (the ledger's batch), nothing claimed before: the plain INSERT of the claim
  // succeeds, and the second row of each id must still be taken back.
  const ids = [randomUUID(), randomUUID(), randomUUID(), randomUUID()].sort()
  const batch = [rec(1, { eventId: ids[3] }), rec(1, { eventId: ids[0] }), rec(2, { eventId: ids[1] }), rec(2, { eventId: ids[2] }), rec(3, { generationId: null })]
  await writeAll(db, batch)
  const rows = await db.sql`select event_id, generation_id from usage_events order by generation_id nulls last`
  t.same(rows.map((r) => [r.generation_id, r.event_id]), [['gen-part-1', ids[0]], ['gen-part-2', ids[1]], [null, batch[4].eventId]])
  t.equal((await db.sql`select count(*)::int as n from usage_generation_ids`)[0].n, 2)
  t.same((await verifyRollups(db.sql)).differences, [], 'the rows taken back counted nowhere')
  const [{ requests }] = await db.sql`select sum(requests)::int as requests from usage_daily_totals`
  t.equal(requests, 3)
})
