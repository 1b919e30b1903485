import t from 'tap'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { createTestDb } from './support/db.js'
import { LogSink } from './support/log-sink.js'
import { mountTinyDisk } from './support/tiny-disk.js'
import { createLogger } from '../src/lib/log.js'
import { migrate } from '../src/db/migrate.js'
import { Journal } from '../src/usage/ledger/journal.js'
import { Ledger } from '../src/usage/ledger/ledger.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'

const ORG = 'mai_client_journal'
const rec = (i: number, extra: Partial<UsageRecord> = {}): UsageRecord => ({
  eventId: randomUUID(), generationId: `gen-journal-${i}-${randomUUID()}`, organizationId: ORG, userId: 'u', externalUserId: `${ORG}_user_x`,
  endpoint: 'chat/completions', model: 'm', servedModel: 'm', provider: 'p', streamed: true, status: 200, outcome: 'ok',
  finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: i, completionTokens: 1, totalTokens: i + 1,
  cachedTokens: 0, reasoningTokens: 0, costUsd: '0.000123456789012345678', upstreamCostUsd: null, isByok: false,
  markupPercent: '0', latencyMs: 1.5, ttfbMs: 0.5, chatId: null, kind: 'api', messageId: null, createdAt: new Date().toISOString(), ...extra,
})
const segments = (dir: string) => readdirSync(dir).filter((f) => f.startsWith('seg-')).sort()

t.test('segments rotate at their size; a pending line keeps its segment alive until its record commits', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-rot-'))
  const log = createLogger('silent')
  const j = new Journal(dir, log, 400) // about one line per segment
  const long = rec(1) // a stream still running when its segments fill
  j.pending(long)
  j.flush()
  const done = Array.from({ length: 4 }, (_, i) => rec(10 + i))
  for (const r of done) { j.append(r); j.flush() } // a segment rotates between writes, never inside one
  const first = segments(dir)[0]
  t.ok(segments(dir).length >= 4, `rotated into ${segments(dir).length} segments`)
  for (const r of done) j.committed(r.eventId)
  t.ok(existsSync(join(dir, first)), 'the segment holding only the pending line is kept')
  t.equal(segments(dir).length, 2, 'fully committed, sealed segments are deleted; the pending one and the open one stay')
  // A crash now: the pending line is all that says this generation must be reconciled.
  const again = new Journal(dir, log, 400)
  const replay = again.replay()
  t.same(replay.pendings.map((r) => r.eventId), [long.eventId], 'the pending line survived the rotation')
  for (const r of replay.finals) again.committed(r.eventId) // their rows are written again (idempotently)
  again.append({ ...long, outcome: 'interrupted' })
  again.committed(long.eventId)
  again.close()
  t.same(segments(dir), [], 'everything deleted once committed')
})

t.test('group commit: the lines of one event-loop turn go out in one write at its end, and afterWrite runs after it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-turn-'))
  const j = new Journal(dir, createLogger('silent'))
  t.teardown(() => j.close())
  const turn = Array.from({ length: 5 }, (_, i) => rec(20 + i))
  j.pending(turn[0])
  for (const r of turn) j.append(r)
  t.same(segments(dir), [], 'nothing is written during the turn')
  t.equal(j.backlog, 5, 'records still buffered count in the backlog (a pending and a final line are one record)')
  let sizeSeenByWaiter = -1
  j.afterWrite(() => { sizeSeenByWaiter = statSync(join(dir, segments(dir)[0])).size })
  t.equal(sizeSeenByWaiter, -1, 'afterWrite waits while lines are buffered')
  await new Promise((r) => setImmediate(r))
  const [seg] = segments(dir)
  const text = readFileSync(join(dir, seg), 'utf8')
  t.equal(text.split('\n').filter(Boolean).length, 6, 'all six lines are on disk once the turn ended')
  t.equal(sizeSeenByWaiter, Buffer.byteLength(text), 'the waiter ran after the write, with every line already on disk')
  let ranAtOnce = false
  j.afterWrite(() => { ranAtOnce = true })
  t.ok(ranAtOnce, 'afterWrite with nothing buffered runs at once')
  const late = rec(30)
  j.append(late)
  j.committed(late.eventId) // committed before its turn ended: its line is written, then let go
  t.equal(j.backlog, 5)
  for (const r of turn) j.committed(r.eventId)
  t.equal(j.backlog, 0, 'nothing is left outstanding')
})

t.test('close() writes the lines still buffered this turn: they are on disk before it returns', async (t) => {
  // A graceful stop closes the journal and exits in the same turn (the exit hook is gone by then):
  // whatever close() leaves buffered is lost.
  const dir = mkdtempSync(join(tmpdir(), 'journal-close-'))
  const log = createLogger('silent')
  const j = new Journal(dir, log)
  const a = rec(40)
  const b = rec(41)
  j.pending(a)
  j.append(b)
  j.close()
  const replay = new Journal(dir, log).replay()
  t.same(replay.finals.map((r) => r.eventId), [b.eventId], 'the final line is on disk')
  t.same(replay.pendings.map((r) => r.eventId), [a.eventId], 'and the pending one')
})

t.test('a disk that fills up: a cut-short write is taken back, the failure is counted, and appends resume once there is room', async (t) => {
  const disk = mountTinyDisk()
  t.teardown(() => disk?.close())
  const logs = new LogSink()
  const log = createLogger('info', logs)
  if (!disk) {
    // Without root no tmpfs can be mounted: /dev/full still fails every write for real.
    const dir = mkdtempSync(join(tmpdir(), 'journal-full-'))
    symlinkSync('/dev/full', join(dir, 'seg-000000000001.jsonl'))
    const j = new Journal(dir, log)
    t.equal(j.appendNow(rec(1)), false, 'appendNow reports the failure')
    t.equal(j.failures, 1)
    t.match(logs.text, /journal: append failed/)
    t.comment('tmpfs not mountable here: cut-short writes (ftruncate) were not exercised')
    return
  }
  const dir = join(disk.dir, 'journal')
  const j = new Journal(dir, log)
  const first = rec(1)
  t.equal(j.appendNow(first), true)
  const [seg] = segments(dir)
  const before = statSync(join(dir, seg)).size
  disk.fill()
  // Larger than the slack left in the segment's last page: write(2) takes part of it, then ENOSPC.
  const big = rec(2, { errorMessage: 'x'.repeat(6000) })
  j.append(big)
  t.equal(j.flush(), false, 'flush reports the failure')
  t.equal(j.failures, 1)
  t.equal(statSync(join(dir, seg)).size, before, 'the partial line was truncated away')
  t.match(logs.text, /journal: append failed; record kept in memory only/)
  t.equal(j.backlog, 1, 'the failed record is not counted as on disk')
  disk.free()
  const third = rec(3)
  t.equal(j.appendNow(third), true, 'appends resume once there is room')
  j.close()
  const replay = new Journal(dir, log).replay()
  t.same(replay.finals.map((r) => r.eventId), [first.eventId, third.eventId])
  t.equal(replay.tornLines, 0, 'no torn line left behind')
})

t.test('a failed write counts each record once, though it held its pending and its final line', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-full-'))
  symlinkSync('/dev/full', join(dir, 'seg-000000000001.jsonl')) // every write fails, root or not
  const j = new Journal(dir, createLogger('silent'))
  const both = rec(1)
  j.pending(both)
  j.append(both)
  j.append(rec(2))
  t.equal(j.flush(), false)
  t.equal(j.failures, 2, 'two records, three lines')
  t.end()
})

t.test('records the journal cannot write (a full disk) stay in memory and still reach Postgres', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Journal Org')`
  const disk = mountTinyDisk()
  t.teardown(() => disk?.close())
  let dir: string
  if (disk) {
    dir = join(disk.dir, 'journal')
    mkdirSync(dir)
    disk.fill()
  } else {
    dir = mkdtempSync(join(tmpdir(), 'journal-full-'))
    symlinkSync('/dev/full', join(dir, 'seg-000000000001.jsonl'))
  }
  const log = createLogger('silent')
  const journal = new Journal(dir, log)
  const ledger = new Ledger(db.sql, journal, log, { batchSize: 5, flushMs: 5, maxInMemory: 2 })
  for (let i = 0; i < 6; i++) ledger.record(rec(i))
  t.equal(journal.failures, 6, 'every append failed on the disk itself')
  t.equal(ledger.inMemory, 6, 'not spilled past the memory cap: they are not on disk')
  t.ok(await ledger.drain(5000))
  t.equal((await db.sql`select count(*)::int as n from usage_events`)[0].n, 6)
  ledger.close()
  journal.close()
})
