import t from 'tap'
import { mkdtempSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { createTestDb } from './support/db.js'
import { LogSink } from './support/sidecar.js'
import { createLogger } from '../src/log.js'
import { migrate } from '../src/db/migrate.js'
import { Journal } from '../src/usage/journal.js'
import { Ledger } from '../src/usage/ledger.js'
import type { UsageRecord } from '../src/usage/record.js'

const ORG = 'mai_client_ledger'
const rec = (i: number): UsageRecord => ({
  eventId: randomUUID(), generationId: `gen-ledger-${i}`, organizationId: ORG, userId: 'u', externalUserId: `${ORG}_user_x`,
  endpoint: 'chat/completions', model: 'm', servedModel: 'm', provider: 'p', streamed: false, status: 200, outcome: 'ok',
  finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: i, completionTokens: 1, totalTokens: i + 1,
  cachedTokens: 0, reasoningTokens: 0, costUsd: `0.${String(i).padStart(6, '0')}000000000000000001`, upstreamCostUsd: null, isByok: false,
  markupPercent: '10', latencyMs: 1.5, ttfbMs: 0.5, chatId: null, createdAt: new Date().toISOString(),
})

t.test('while inserts fail, records wait (spilling to the journal past the memory cap), then all land exactly once', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  const dir = mkdtempSync(join(tmpdir(), 'ledger-'))
  const logs = new LogSink()
  const log = createLogger('info', logs)
  const journal = new Journal(dir, log)
  const ledger = new Ledger(db.sql, journal, log, { batchSize: 7, flushMs: 5, maxInMemory: 10 })
  // No organization row yet: every insert fails its foreign key, like a database that refuses.
  const records = Array.from({ length: 60 }, (_, i) => rec(i))
  for (const r of records) ledger.record(r)
  ledger.record(records[3], true) // a replayed duplicate must not count twice
  await new Promise((r) => setTimeout(r, 300))
  t.ok(ledger.inMemory <= 10, `memory holds at most the cap (${ledger.inMemory})`)
  t.equal(ledger.depth, 61, 'nothing dropped')
  t.equal(journal.backlog, 60, 'every record is on disk')
  t.match(logs.text, /ledger: insert failed, will retry/)
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  t.ok(await ledger.drain(10_000), 'drained once the database accepts')
  const rows = await db.sql`select generation_id, cost_usd::text as cost, billed_cost_usd::text as billed from usage_events order by prompt_tokens`
  t.equal(rows.length, 60)
  t.same(rows.map((r) => r.cost), records.map((r) => r.costUsd))
  t.equal(rows[5].billed.replace(/0+$/, ''), '0.0000055000000000000000011', 'markup applied in numeric, exact')
  t.equal(journal.backlog, 0, 'journal trimmed after commit')
  ledger.close()
  journal.close()
  t.same(readdirSync(dir), [], 'no segment left once everything is committed')
})

t.test('a failed journal append keeps the record in memory', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  const log = createLogger('silent')
  const journal = new Journal(mkdtempSync(join(tmpdir(), 'ledger-')), log)
  journal.append = () => false // as on a full disk
  const ledger = new Ledger(db.sql, journal, log, { batchSize: 5, flushMs: 5, maxInMemory: 2 })
  for (let i = 0; i < 6; i++) ledger.record(rec(i))
  t.equal(ledger.inMemory, 6, 'not spilled: it is not on disk')
  t.ok(await ledger.drain(5000))
  t.equal((await db.sql`select count(*)::int as n from usage_events`)[0].n, 6)
  ledger.close()
})
