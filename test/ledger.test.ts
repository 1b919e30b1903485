import t from 'tap'
import { mkdtempSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import { createTestDb, withoutServer } from './support/db.js'
import { LogSink } from './support/log-sink.js'
import { createLogger } from '../src/lib/log.js'
import { migrate } from '../src/db/migrate.js'
import { Journal } from '../src/usage/ledger/journal.js'
import { Ledger } from '../src/usage/ledger/ledger.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'
import { UserDirectory } from '../src/identity/directory.js'
import type { Identity } from '../src/identity/identify.js'

const ORG = 'mai_client_ledger'

async function until (cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time')
    await new Promise((r) => setTimeout(r, 10))
  }
}
const rec = (i: number): UsageRecord => ({
  eventId: randomUUID(), generationId: `gen-ledger-${i}`, organizationId: ORG, userId: 'u', externalUserId: `${ORG}_user_x`,
  endpoint: 'chat/completions', model: 'm', servedModel: 'm', provider: 'p', streamed: false, status: 200, outcome: 'ok',
  finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: i, completionTokens: 1, totalTokens: i + 1,
  cachedTokens: 0, reasoningTokens: 0, costUsd: `0.${String(i).padStart(6, '0')}000000000000000001`, upstreamCostUsd: null, isByok: false,
  markupPercent: '10', latencyMs: 1.5, ttfbMs: 0.5, chatId: null, kind: 'api', messageId: null, createdAt: new Date().toISOString(),
})

t.test('while inserts fail, records wait (spilling to the journal past the memory cap), then all land exactly once', async (t) => {
  const db = await createTestDb({ migrated: true })
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
  await until(() => /ledger: insert failed, will retry/.test(logs.text) && journal.backlog === 60)
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

t.test('afterJournal: the answer waits until the records accepted so far are on disk; without a journal it runs at once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ledger-after-'))
  const log = createLogger('silent')
  const journal = new Journal(dir, log)
  // No insert is reached here (the flush timer is far off and cleared at the end): no database.
  const noSql = null as unknown as ConstructorParameters<typeof Ledger>[0]
  const ledger = new Ledger(noSql, journal, log, { batchSize: 100, flushMs: 600_000 })
  t.teardown(() => { ledger.close(); journal.close() })
  const onDisk = () => readdirSync(dir).map((f) => readFileSync(join(dir, f), 'utf8')).join('')
  const r = rec(1)
  ledger.record(r)
  let seen: string | null = null
  ledger.afterJournal(() => { seen = onDisk() })
  t.equal(seen, null, 'does not run while the record is only buffered')
  await until(() => seen !== null)
  t.match(seen, r.eventId, 'ran once the record was on disk')
  let atOnce = false
  ledger.afterJournal(() => { atOnce = true })
  t.ok(atOnce, 'nothing buffered: runs at once')
  const bare = new Ledger(noSql, null, log, { batchSize: 100, flushMs: 600_000 })
  let ran = false
  bare.afterJournal(() => { ran = true })
  t.ok(ran, 'no journal: runs at once')
  bare.close()
})

t.test('a record Postgres refuses as data is set aside with its reason; the rest of the batch lands; NULs are stripped', async (t) => {
  const db = await createTestDb({ migrated: true })
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
  good[2].externalUserId = 'ext\u0000x'
  good[2].mapping = { userId: 'mapped', name: 'N\u0000', email: null, role: null }
  const poison = { ...rec(99), latencyMs: 1e15 } // numeric(12,3) overflow: SQLSTATE 22003
  for (const r of [good[0], good[1], poison, good[2], good[3], good[4]]) ledger.record(r)
  t.ok(await ledger.drain(5000), 'the queue is not blocked by one bad row')
  const rows = await db.sql`select generation_id, model, user_id from usage_events order by prompt_tokens`
  t.same(rows.map((r) => r.generation_id), good.map((r) => r.generationId))
  t.equal(rows[1].model, 'badmodel')
  t.equal(rows[1].user_id, 'userx')
  t.same(await db.sql`select external_user_id, user_name from user_mappings where user_id = 'mapped'`, [{ external_user_id: 'extx', user_name: 'N' }], 'the mapping a record carries is stripped alike')
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
  const db = await createTestDb({ migrated: true })
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

const who = (userId: string, name: string | null = null, email: string | null = null): Identity => ({ userId, name, email, role: 'user', chatId: null, source: 'headers', groups: [], apiKey: null })

t.test('identity is normalized once: zed and z\\u0000ed are one user, one external id, one mapping row, and their batch lands', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  const dir = new UserDirectory(ORG)
  const a = dir.resolve(who('zed', 'Zed', 'zed@example.com'))
  const b = dir.resolve(who('z\u0000ed', 'Zed Again'))
  t.equal(a.externalUserId, b.externalUserId, 'the same external id')
  t.equal(b.userId, 'zed')
  t.same(b.mapping, { userId: 'zed', name: 'Zed Again', email: 'zed@example.com', role: 'user', groups: [] }, 'a change is carried, merged with what was known')
  t.equal(dir.resolve(who('zed', 'Zed Again')).mapping, null, 'nothing new: no mapping carried')
  t.equal(dir.resolve(who('\u0000')).externalUserId, ORG, 'an id that cleans to nothing bills the organization')
  const logs = new LogSink()
  const log = createLogger('info', logs)
  const rejectedPath = join(mkdtempSync(join(tmpdir(), 'ledger-')), 'rejected.jsonl')
  const ledger = new Ledger(db.sql, null, log, { batchSize: 50, flushMs: 5, rejectedPath })
  const records = [a, b].map((u, i) => ({ ...rec(200 + i), userId: u.userId, externalUserId: u.externalUserId, mapping: u.mapping }))
  // Raw ids as an older journal line could carry them: the ledger cleans and merges them again.
  records.push({ ...rec(202), userId: 'z\u0000ed', externalUserId: a.externalUserId, mapping: { userId: 'z\u0000ed', name: null, email: null, role: 'admin' } })
  for (const r of records) ledger.record(r)
  t.ok(await ledger.drain(5000), 'the batch is not blocked')
  t.equal(ledger.rejected, 0, 'nothing set aside')
  t.equal(ledger.isolated, 0, 'one statement for the whole batch: no row had to be tried alone')
  t.notMatch(logs.text, /insert failed/)
  const maps = await db.sql`select user_id, external_user_id, user_name, user_email, user_role from user_mappings`
  t.same(maps, [{ user_id: 'zed', external_user_id: a.externalUserId, user_name: 'Zed Again', user_email: 'zed@example.com', user_role: 'admin' }])
  t.equal((await db.sql`select count(*)::int as n from usage_events where user_id = 'zed'`)[0].n, 3)
  ledger.close()
})

t.test('a mapping Postgres refuses is set aside with its record; the rest of the batch and its users land', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  const rejectedPath = join(mkdtempSync(join(tmpdir(), 'ledger-')), 'rejected.jsonl')
  const ledger = new Ledger(db.sql, null, createLogger('silent'), { batchSize: 50, flushMs: 5, rejectedPath })
  const good = [rec(300), rec(301)].map((r, i) => ({ ...r, userId: `ok-${i}`, mapping: { userId: `ok-${i}`, name: `OK ${i}`, email: null, role: null } }))
  // A created_at Postgres cannot read makes the mapping (and the row) refuse: SQLSTATE 22007/22008.
  const bad = { ...rec(302), userId: 'bad', createdAt: 'not a time', mapping: { userId: 'bad', name: 'Bad', email: null, role: null } }
  for (const r of [good[0], bad, good[1]]) ledger.record(r)
  t.ok(await ledger.drain(5000))
  t.same((await db.sql`select user_id from user_mappings order by user_id`).map((r) => r.user_id), ['ok-0', 'ok-1'])
  t.equal(ledger.rejected, 1)
  t.match(readFileSync(rejectedPath, 'utf8'), /"userId":"bad"/)
  ledger.close()
})

t.test('the directory stays bounded: old entries are dropped, and a dropped user just carries the mapping again', async (t) => {
  const dir = new UserDirectory(ORG)
  for (let i = 0; i < 100_001; i++) dir.resolve(who(`user-${i}`))
  t.ok(dir.size <= 100_000, `${dir.size} entries`)
  t.not(dir.resolve(who('user-0')).mapping, null, 'an evicted user is carried again')
  const at = Date.now()
  dir.resolve(who('fresh'), at)
  t.equal(dir.resolve(who('fresh'), at + 30_000).mapping, null)
  t.not(dir.resolve(who('fresh'), at + 61_000).mapping, null, 'refreshed once a minute for last_seen_at')
})

t.test('usage rows must name an existing organization, checked per statement: a batch with one unknown organization is refused whole, and an organization with usage cannot be deleted or renamed', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org'), ('mai_client_idle', 'Idle Org')`
  const good = rec(1)
  const stray = { ...rec(2), organizationId: 'mai_client_nobody' }
  const journal = new Journal(mkdtempSync(join(tmpdir(), 'ledger-')), createLogger('silent'))
  const ledger = new Ledger(db.sql, journal, createLogger('silent'), { batchSize: 10, flushMs: 5 })
  t.teardown(() => { ledger.close(); journal.close() })
  ledger.record(good)
  ledger.record(stray)
  t.notOk(await ledger.drain(300), 'the batch waits: a missing organization is a reason to retry, not bad data to set aside')
  t.same(await db.sql`select count(*)::int as n from usage_events`, [{ n: 0 }], 'nothing of the batch landed')
  await db.sql`insert into organizations (id, name) values ('mai_client_nobody', 'Late Org')`
  t.ok(await ledger.drain(10_000), 'lands once the organization exists')
  t.same((await db.sql`select organization_id from usage_events order by organization_id`).map((r) => r.organization_id), [ORG, 'mai_client_nobody'])
  const cols = (await db.sql`select usage_events_insert_columns() as c`)[0].c as string
  // A copy of a landed row under an organization nobody created, every other column as it was.
  const copy = db.sql`insert into usage_events (${db.sql.unsafe(cols)})
    select ${db.sql.unsafe(cols)} from jsonb_populate_record(null::usage_events,
      (select to_jsonb(u) || jsonb_build_object('event_id', gen_random_uuid(), 'generation_id', null, 'organization_id', 'mai_client_ghost') from usage_events u limit 1))`
  t.match(await copy.catch((e: { code?: string, message: string }) => e), { code: '23503', message: /organization 'mai_client_ghost'/ }, "a plain insert too: the foreign key's own SQLSTATE, naming the organization")
  for (const attempt of [db.sql`delete from organizations where id = ${ORG}`, db.sql`update organizations set id = 'renamed' where id = ${ORG}`]) {
    t.match(await attempt.catch((e: { code?: string }) => e), { code: '23503' }, 'an organization with usage stays')
  }
  await db.sql`update organizations set name = 'Renamed Org' where id = ${ORG}`
  await db.sql`delete from organizations where id = 'mai_client_idle'`
  t.same((await db.sql`select id, name from organizations order by id`).map((r) => `${r.id}:${r.name}`), [`${ORG}:Renamed Org`, 'mai_client_nobody:Late Org'], 'other changes are not blocked')
})

t.test('an organization deleted while a batch for it is being inserted: the delete waits for the batch, then is refused; no row is left without its organization', async (t) => {
  if (await withoutServer(t, 'a delete waiting on a lock held by another connection\'s transaction')) return
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  const cols = (await db.sql`select usage_events_insert_columns() as c`)[0].c as string
  const ledger = new Ledger(db.sql, null, createLogger('silent'), { batchSize: 10, flushMs: 1 })
  ledger.record(rec(1))
  t.ok(await ledger.drain(10_000))
  ledger.close()
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  let inserted!: () => void
  const insertedYet = new Promise<void>((resolve) => { inserted = resolve })
  // A second organization, and a batch for it whose transaction stays open.
  await db.sql`insert into organizations (id, name) values ('mai_client_racing', 'Racing')`
  const batch = db.sql.begin(async (tx) => {
    await tx`insert into usage_events (${tx.unsafe(cols)}) select ${tx.unsafe(cols)} from jsonb_populate_record(null::usage_events,
      (select to_jsonb(u) || jsonb_build_object('event_id', gen_random_uuid(), 'generation_id', null, 'organization_id', 'mai_client_racing') from usage_events u limit 1))`
    inserted()
    await held
  })
  await insertedYet
  let deleteSettled = false
  const del = db.sql`delete from organizations where id = 'mai_client_racing'`.then(() => 'deleted', (e: { code?: string }) => e.code)
    .finally(() => { deleteSettled = true })
  // Seen from a connection of its own: the delete settles (wrongly) or waits on a lock.
  const watcher = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => watcher.end({ timeout: 1 }))
  const lockWait = async () => (await watcher`select count(*)::int as n from pg_stat_activity
    where wait_event_type = 'Lock' and query like 'delete from organizations%'`)[0].n > 0
  while (!deleteSettled && !await lockWait()) await new Promise((r) => setTimeout(r, 10))
  t.notOk(deleteSettled, 'the delete waits for the open batch')
  release()
  await batch
  t.equal(await del, '23503', 'then finds its usage and is refused')
  const [{ n }] = await db.sql`select count(*)::int as n from usage_events e where not exists (select 1 from organizations o where o.id = e.organization_id)`
  t.equal(n, 0, 'no row without its organization')
})

/** Polls an async condition (a query) until it holds; a wait, not a timed assertion. */
async function untilAsync (cond: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

t.test('after a flush: a full batch that came in during the insert goes at once, a partial one waits flushMs to fill (one insert statement per batch)', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  // The ledger's own connections: db.sql's two hold the table lock and watch pg_stat_activity.
  const sql = postgres(db.url, { max: 3, onnotice: () => {} })
  // flushMs far beyond the test: every insert below is started by a full batch, never by the timer.
  const ledger = new Ledger(sql, null, createLogger('silent'), { batchSize: 2, flushMs: 600_000 })
  t.teardown(async () => { ledger.close(); await sql.end({ timeout: 1 }) })
  const records = Array.from({ length: 8 }, (_, i) => rec(i + 1))
  // An insert held in flight by a real lock (SHARE conflicts with the insert's ROW EXCLUSIVE).
  async function holdInsert (during: () => void): Promise<void> {
    let release!: () => void
    let locked!: () => void
    const isLocked = new Promise<void>((resolve) => { locked = resolve })
    const holding = db.sql.begin(async (tx) => { await tx`lock table usage_events in share mode`; locked(); await new Promise<void>((resolve) => { release = resolve }) })
    await isLocked
    during()
    // On the embedded database the transaction holds the one session, and the insert waits for
    // its turn instead: the ledger's connection is the only other client.
    await untilAsync(async () => db.queued
      ? db.queued() === 1
      : (await db.sql`select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock' and query like '%insert into usage_events%'`).length === 1,
    'the insert waiting for the lock')
    release()
    await holding
  }
  const statements = async () => (await db.sql`select array_agg(prompt_tokens order by prompt_tokens) as b from usage_events group by xmin::text order by min(prompt_tokens)`).map((r) => r.b)

  // 1, 2 fill a batch: their insert waits for the lock; 3, 4 arrive meanwhile and fill the next.
  await holdInsert(() => { ledger.record(records[0]); ledger.record(records[1]) })
  ledger.record(records[2])
  ledger.record(records[3])
  // (recorded while 1, 2 are still in flight: the lock is released only after the insert waits)
  await until(() => ledger.written === 4)
  t.same(await statements(), [[1, 2], [3, 4]], 'the full batch went as soon as the insert before it was done, not flushMs later')

  // 5, 6 in flight again; 7 arrives meanwhile, a partial batch.
  await holdInsert(() => { ledger.record(records[4]); ledger.record(records[5]) })
  ledger.record(records[6])
  await until(() => ledger.written === 6)
  // A ledger that sent 7 at once has done so by now: its zero-delay timer was set when 5, 6 were
  // done, before this one, and Node runs timers in order of expiry (no race, whatever the load).
  await new Promise((r) => setTimeout(r, 20))
  t.equal(ledger.depth, 1, '7 waits, alone in the queue')
  ledger.record(records[7]) // fills the batch: 7 and 8 go together
  await until(() => ledger.written === 8)
  t.same(await statements(), [[1, 2], [3, 4], [5, 6], [7, 8]], 'a partial batch waits for the next records instead of going alone')
})

t.test('after a failed insert the retry follows the backoff (at most a second), not flushMs', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  const logs = new LogSink()
  const ledger = new Ledger(db.sql, null, createLogger('info', logs), { batchSize: 2, flushMs: 600_000 })
  t.teardown(() => ledger.close())
  // No organization row yet: the insert fails its foreign key (not a data error: it is retried).
  ledger.record(rec(1))
  ledger.record(rec(2))
  await until(() => /ledger: insert failed, will retry/.test(logs.text))
  t.equal(ledger.written, 0)
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  // No drain(): only the ledger's own retry can write them; flushMs (10 minutes) would not.
  await until(() => ledger.written === 2)
  t.equal((await db.sql`select count(*)::int as n from usage_events`)[0].n, 2, 'written by a retry')
})

t.test('drain gives up at its deadline while an insert is still held by Postgres: stop is never held up by a slow database', async (t) => {
  // A lock held by another session, not a sleep: the insert cannot finish until the test lets go,
  // and the test lets go only after drain has answered. A drain that waited for the insert would
  // never answer, and the guard below reports that instead of the file's timeout.
  if (await withoutServer(t, 'a second session holding a table lock')) return
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Ledger Org')`
  const holder = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => holder.end({ timeout: 1 }))
  let release!: () => void
  const released = new Promise<void>((r) => { release = r })
  let locked!: () => void
  const lockedYet = new Promise<void>((r) => { locked = r })
  const holding = holder.begin(async (tx) => {
    await tx`lock table usage_events in access exclusive mode`
    locked()
    await released
  })
  await lockedYet
  const ledger = new Ledger(db.sql, null, createLogger('silent'), { batchSize: 10, flushMs: 1 })
  t.teardown(() => ledger.close())
  ledger.record(rec(1))
  const [{ n: blocked }] = await waitForLockWait(db.sql)
  t.equal(blocked, 1, 'the insert waits on the lock')
  const guard = new Promise<'stuck'>((r) => { const timer = setTimeout(() => r('stuck'), 30_000); t.teardown(() => clearTimeout(timer)) })
  t.equal(await Promise.race([ledger.drain(200), guard]), false, 'drain answers false at its deadline, the insert still in flight')
  release()
  await holding
  t.ok(await ledger.drain(10_000), 'the insert lands once the lock is gone')
  t.same(await db.sql`select count(*)::int as n from usage_events`, [{ n: 1 }])
})

/** Waits until a session of the test database waits on a lock (the ledger's insert). */
async function waitForLockWait (sql: postgres.Sql<{}>): Promise<Array<{ n: number }>> {
  for (;;) {
    const rows = await sql<Array<{ n: number }>>`select count(*)::int as n from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock'`
    if (rows[0].n > 0) return rows
    await new Promise((r) => setTimeout(r, 10))
  }
}
