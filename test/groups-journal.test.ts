import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { createTestDb } from './support/db.js'
import { createLogger } from '../src/lib/log.js'
import { migrate } from '../src/db/migrate.js'
import { Journal } from '../src/usage/ledger/journal.js'
import { Ledger } from '../src/usage/ledger/ledger.js'
import { fromIntent, newRecord, type UsageRecord } from '../src/usage/ledger/record.js'

// A row's groups travel in its journal lines: after a crash, a replayed final line, and the row
// made of a lone intent, land with the groups the request was made with, in usage_events, in the
// group rollups and in the user's mapping. A line written by an older version (no groups) lands
// in no group.

const ORG = 'mai_client_groups_journal'
const rec = (groups: string[] | undefined, extra: Partial<UsageRecord> = {}): UsageRecord => {
  const r = newRecord({
    organizationId: ORG, userId: 'u-j', externalUserId: `${ORG}_u-j`, endpoint: 'chat/completions', model: 'm', streamed: false,
    markupPercent: '0', chatId: null, generationId: `gen-${randomUUID()}`, outcome: 'ok', status: 200, costUsd: '0.0001234567890123',
    mapping: { userId: 'u-j', name: 'J', email: null, role: null, groups }, ...extra,
  })
  if (groups === undefined) delete r.groups
  else r.groups = groups
  return r
}

t.test('groups survive the journal: final lines, intents and old lines', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Org')`
  const dir = mkdtempSync(join(tmpdir(), 'journal-groups-'))
  const log = createLogger('silent')
  const before = new Journal(dir, log)
  const final = rec(['Maths', 'Physics'])
  const intent = rec(['Physics'], { generationId: null, costUsd: null, outcome: 'interrupted', estimatedCostUsd: '0.5' })
  const old = rec(undefined)
  before.append(final)
  before.intent(intent)
  // An old version's line: the record as it was written then, with no groups field at all.
  const oldLine = JSON.parse(JSON.stringify(old)) as Record<string, unknown>
  t.equal(oldLine.groups, undefined)
  before.append(old)
  before.flush()
  before.close()

  // "Crash": a new journal reads the same directory.
  const after = new Journal(dir, log)
  const replay = after.replay()
  t.same(replay.finals.find((r) => r.eventId === final.eventId)?.groups, ['Maths', 'Physics'], 'a final line keeps its groups')
  t.same(replay.intents.find((r) => r.eventId === intent.eventId)?.groups, ['Physics'], 'an intent keeps its groups')
  const ledger = new Ledger(db.sql, after, log, { batchSize: 10, flushMs: 5 })
  for (const r of replay.finals) ledger.record(r, true)
  for (const r of replay.intents) ledger.record(fromIntent(r), true)
  t.ok(await ledger.drain(5000))
  ledger.close()
  after.close()

  const rows = await db.sql<Array<{ event_id: string, groups: string[] }>>`select event_id::text, groups from usage_events`
  const by = new Map(rows.map((r) => [r.event_id, r.groups]))
  t.same(by.get(final.eventId), ['Maths', 'Physics'])
  t.same(by.get(intent.eventId), ['Physics'], 'the interrupted row made from an intent is in its group')
  t.same(by.get(old.eventId), [], 'an old line lands in no group')
  const sums = await db.sql<Array<{ group_id: string, requests: number }>>`
    select group_id, sum(requests)::int as requests from (
      select group_id, requests from usage_group_daily_rollups union all select group_id, requests from usage_group_rollup_deltas) r
    group by 1 order by 1`
  t.same(sums, [{ group_id: 'Maths', requests: 1 }, { group_id: 'Physics', requests: 2 }], 'the group rollups count each group of each row')
  const [m] = await db.sql<Array<{ groups: string[] }>>`select groups from user_mappings where user_id = 'u-j'`
  t.ok(Array.isArray(m.groups), 'the mapping has groups')
})
