import t from 'tap'
import { mkdtempSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
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
  markupPercent: '10', latencyMs: 1.5, ttfbMs: 0.5, chatId: null, kind: 'api', messageId: null, createdAt: new Date().toISOString(),
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

t.test('a record Postgres refuses as data is set aside with its reason; the rest of the batch lands; NULs are stripped', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  const dir = mkdtempSync(join(tmpdir(), 'ledger-'))
  const logs = new LogSink()
  const log = createLogger('info', logs)
  const journal = new Journal(join(dir, 'journal'), log)
  const rejectedPath = join(dir, 'rejected.jsonl')
  const ledger = new Ledger(db.sql, journal, log, { batchSize: 10, flushMs: 5, rejectedPath })
  const good = Array.from({ length: 5 }, (_, i) => rec(i))
  good[1].model = 'bad\u0000model'
  good[1].userId = 'user\u0000x'
  const poison = { ...rec(99), latencyMs: 1e15 } // numeric(12,3) overflow: SQLSTATE 22003
  for (const r of [good[0], good[1], poison, good[2], good[3], good[4]]) ledger.record(r)
  t.ok(await ledger.drain(5000), 'the queue is not blocked by one bad row')
  const rows = await db.sql`select generation_id, model, user_id from usage_events order by prompt_tokens`
  t.same(rows.map((r) => r.generation_id), good.map((r) => r.generationId))
  t.equal(rows[1].model, 'badmodel')
  t.equal(rows[1].user_id, 'userx')
  const set = readFileSync(rejectedPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  t.equal(set.length, 1)
  t.equal(set[0].record.eventId, poison.eventId)
  t.match(set[0].reason, /^22003/)
  t.equal(ledger.rejected, 1)
  t.equal(journal.backlog, 0, 'set aside counts as done: the file keeps it')
  t.match(logs.text, /record refused by postgres, set aside/)
  ledger.close()
  journal.close()
})

t.test('journal replay adopts segments in place: nothing copied, deleted only once committed, torn lines skipped', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-'))
  const log = createLogger('silent')
  const first = new Journal(dir, log)
  const a = rec(1)
  const b = rec(2)
  const c = rec(3)
  first.pending(a)
  first.append(b)
  first.pending(c)
  first.append({ ...c, outcome: 'client_aborted' })
  first.close() // a crash would leave the same files; close only seals them
  const files = readdirSync(dir)
  t.equal(files.length, 1)
  writeFileSync(join(dir, files[0]), readFileSync(join(dir, files[0]), 'utf8') + '{"k":"r","r":{"eventId":"torn')
  const second = new Journal(dir, log)
  const replay = second.replay()
  t.same(replay.finals.map((r) => r.eventId).sort(), [b.eventId, c.eventId].sort())
  t.same(replay.pendings.map((r) => r.eventId), [a.eventId], 'a pending without its final is to be reconciled')
  t.equal(replay.finals.find((r) => r.eventId === c.eventId)?.outcome, 'client_aborted', 'the final line wins')
  t.equal(replay.tornLines, 1)
  t.same(readdirSync(dir), files, 'no copy was made')
  t.equal(second.backlog, 3)
  second.committed(b.eventId)
  second.committed(c.eventId)
  t.ok(existsSync(join(dir, files[0])), 'kept while a record in it is outstanding')
  second.append({ ...a, outcome: 'interrupted' })
  second.committed(a.eventId)
  t.notOk(existsSync(join(dir, files[0])), 'deleted once everything in it is committed')
  second.close()
  t.same(readdirSync(dir), [])
})

t.test('lone surrogates are made well-formed, and a batch that is all bad data cannot wedge the queue', async (t) => {
  const db = await createTestDb()
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  const dir = mkdtempSync(join(tmpdir(), 'ledger-'))
  const log = createLogger('silent')
  const journal = new Journal(join(dir, 'journal'), log)
  const rejectedPath = join(dir, 'rejected.jsonl')
  const ledger = new Ledger(db.sql, journal, log, { batchSize: 5, flushMs: 5, rejectedPath })
  const odd = { ...rec(1), userId: 'alice\ud800', model: 'm\udc00x' }
  ledger.record(odd)
  t.ok(await ledger.drain(5000))
  const [row] = await db.sql`select user_id, model from usage_events where event_id = ${odd.eventId}`
  t.same(row, { user_id: 'alice\ufffd', model: 'm\ufffdx' }, 'stored, with U+FFFD in place of the lone surrogate')
  const bad = Array.from({ length: 5 }, (_, i) => ({ ...rec(10 + i), latencyMs: 1e15 }))
  const good = rec(20)
  for (const r of [...bad, good]) ledger.record(r)
  t.ok(await ledger.drain(10_000), 'drained: five bad rows at the front did not block the good one')
  t.equal(ledger.rejected, 5)
  t.equal(readFileSync(rejectedPath, 'utf8').trim().split('\n').length, 5, 'each set aside once')
  t.same((await db.sql`select generation_id from usage_events where event_id = ${good.eventId}`).length, 1)
  ledger.close()
  journal.close()
})
