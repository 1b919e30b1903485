import t from 'tap'
import { existsSync, mkdtempSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLogger } from '../src/lib/log.js'
import { Journal } from '../src/usage/ledger/journal.js'
import { fromIntent, newRecord, toRow, UNNAMED_INTERRUPTION, type UsageRecord } from '../src/usage/ledger/record.js'

// The journal's intent lines (src/usage/ledger/journal.ts): what replay makes of them, and how they keep
// their segments alive: never deleted while the request may still cost something, never kept
// once its row is committed or the request was withdrawn.

const log = createLogger('silent')
const ORG = 'mai_client_journal_intent'
const segments = (dir: string) => readdirSync(dir).filter((f) => f.startsWith('seg-')).sort()
const intentOf = (estimate: string | null = '0.0123'): UsageRecord => ({
  ...newRecord({ organizationId: ORG, userId: 'u', externalUserId: `${ORG}_user_x`, endpoint: 'chat/completions', model: 'm', streamed: false, markupPercent: '0', chatId: null }),
  estimatedCostUsd: estimate,
})

t.test('replay: a final supersedes a pending and an intent, a pending an intent, a withdrawal its intent; an intent alone is returned as such', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-intent-'))
  const j = new Journal(dir, log)
  const alone = intentOf()
  const named = intentOf()
  const finished = intentOf()
  const withdrawn = intentOf()
  for (const r of [alone, named, finished, withdrawn]) j.intent(r)
  j.flush()
  j.pending({ ...named, generationId: 'gen-named' })
  j.append({ ...finished, generationId: 'gen-finished', outcome: 'ok', costUsd: '0.001' })
  j.flush()
  j.withdraw(withdrawn.eventId)
  // SIGKILL here: nothing is closed.
  const replay = new Journal(dir, log).replay()
  t.same(replay.intents.map((r) => r.eventId), [alone.eventId], 'only the intent nothing followed')
  t.equal(replay.intents[0].estimatedCostUsd, '0.0123', 'with its estimate')
  t.same(replay.pendings.map((r) => [r.eventId, r.generationId]), [[named.eventId, 'gen-named']], 'the named one is reconciled, not estimated')
  t.same(replay.finals.map((r) => [r.eventId, r.outcome]), [[finished.eventId, 'ok']])
})

t.test('an intent keeps its segment until its row commits; a final in a later segment lets both go', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-intent-seg-'))
  const j = new Journal(dir, log, 300) // about one line per segment
  const long = intentOf() // a non-stream request still generating
  j.intent(long)
  j.flush()
  const first = segments(dir)[0]
  const others = Array.from({ length: 3 }, () => intentOf())
  for (const r of others) { j.intent(r); j.flush(); j.append({ ...r, outcome: 'ok', generationId: `gen-${r.eventId}` }); j.flush() }
  for (const r of others) j.committed(r.eventId)
  t.ok(existsSync(join(dir, first)), 'the segment holding only an intent is kept while its request runs')
  t.equal(j.backlog, 1, 'the request in flight counts as outstanding')
  j.append({ ...long, outcome: 'ok', generationId: 'gen-long', costUsd: '0.002' })
  j.flush()
  j.committed(long.eventId)
  t.notOk(existsSync(join(dir, first)), 'deleted once the row of its request committed')
  j.close()
  t.same(segments(dir), [], 'nothing kept once everything committed')
})

t.test('a withdrawn intent leaves nothing behind, at once and after a restart', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-intent-x-'))
  const j = new Journal(dir, log, 200)
  const gone = intentOf()
  j.intent(gone)
  j.flush()
  const first = segments(dir)[0]
  j.intent(intentOf()) // another request, still running, in a later segment
  j.flush()
  j.withdraw(gone.eventId)
  t.notOk(existsSync(join(dir, first)), 'the withdrawn intent\'s sealed segment is deleted at once')
  t.equal(j.backlog, 1, 'only the running request is outstanding')
  // A crash before the running one ends: its segment holds the withdrawal line too.
  const again = new Journal(dir, log, 200)
  const replay = again.replay()
  t.equal(replay.intents.length, 1, 'the running one becomes an interrupted row')
  t.notOk(replay.intents.some((r) => r.eventId === gone.eventId), 'the withdrawn one does not')
  again.committed(replay.intents[0].eventId)
  again.close()
  t.same(segments(dir), [], 'no segment is kept forever for a withdrawal line')
})

t.test('the row made of an intent: interrupted, no cost, the estimate in estimated_cost_usd; no other row carries an estimate', async (t) => {
  const r = intentOf('0.000001234567890123456789')
  const row = toRow(fromIntent(r))
  t.match(row, { event_id: r.eventId, outcome: 'interrupted', generation_id: null, cost_usd: null, estimated_cost_usd: '0.000001234567890123456789', error_message: UNNAMED_INTERRUPTION, usage_source: 'none' })
  t.equal(toRow({ ...r, outcome: 'ok', costUsd: '0.01', generationId: 'g' }).estimated_cost_usd, null, 'a finished request: its cost, no estimate')
  t.equal(toRow({ ...r, outcome: 'interrupted', generationId: 'g' }).estimated_cost_usd, null, 'an interrupted request whose generation was named: reconciled, no estimate')
  t.equal(toRow({ ...r, outcome: 'client_aborted' }).estimated_cost_usd, null, 'an outcome the sidecar saw: no estimate')
  t.equal(toRow(fromIntent({ ...r, estimatedCostUsd: undefined })).estimated_cost_usd, null, 'a journal line of an older version: no estimate, no error')
})

t.test('replay of a journal with intents is idempotent: the row it becomes is a final line, so the next replay finds it done', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-intent-idem-'))
  const j = new Journal(dir, log)
  const r = intentOf()
  j.intent(r)
  j.flush()
  const one = new Journal(dir, log)
  const first = one.replay()
  t.equal(first.intents.length, 1)
  one.append(fromIntent(first.intents[0])) // what boot does: the row goes through the ledger (journaled)
  one.flush()
  // A crash before Postgres committed it.
  const two = new Journal(dir, log).replay()
  t.same(two.intents, [], 'not an intent any more')
  t.same(two.finals.map((x) => [x.eventId, x.outcome, x.estimatedCostUsd]), [[r.eventId, 'interrupted', '0.0123']], 'one final line, same event id (the insert key)')
})
