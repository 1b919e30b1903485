import t from 'tap'
import { createTestDb, type TestDb } from './support/db.js'
import { FakeCloudEvents } from './support/billing-receivers.js'
import { ORG, seedLedger } from './support/seed.js'
import { LogSink } from './support/log-sink.js'
import { migrate } from '../src/db/migrate.js'
import { createLogger } from '../src/lib/log.js'
import { startExporter } from '../src/export/exporter.js'
import { cloudEventsSink } from '../src/export/cloudevents-sink.js'
import { exportStatus } from '../src/export/status.js'
import { sumDecimals } from '../src/lib/decimal.js'

// The CloudEvents batch sink against a receiver that checks the signature and the batch shape:
// every row arrives (refusals included) under its stable id, with exact decimal strings; a
// receiver down for a while and a refused event do not lose or block anything.

const SECRET = 'cloudevents-secret-0123456789'
let db: TestDb
let ce: FakeCloudEvents
let url: string

t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, 'sql')
  ce = new FakeCloudEvents(SECRET)
  url = await ce.listen()
})
t.teardown(async () => { await ce.close(); await db.drop() })

async function waitFor (what: string, check: () => Promise<boolean> | boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

t.test('every row, refusals included, once under its id, sums exact', async (t) => {
  await seedLedger(db.sql, { rows: 700, from: '2026-10-25', days: 20 })
  await db.sql`INSERT INTO usage_events (event_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status, outcome, usage_source, markup_percent, created_at, groups)
    VALUES ('00000000-0000-4000-8000-000000000001', ${ORG}, 'u-anna', 'x', 'chat/completions', 'm', false, 402, 'budget_exceeded', 'none', '12.5', now(), '{g-a,g-b}')`
  // Down for the first 5 requests (connection refused is simulated by 503), then a batch refused
  // once it holds the poisoned row.
  const [poison] = await db.sql<{ id: string }[]>`SELECT coalesce(generation_id, event_id::text) AS id FROM usage_events WHERE cost_usd IS NOT NULL ORDER BY event_id LIMIT 1`
  ce.answer = (n, { ids }) => {
    if (n < 5) return { status: 503, headers: { 'retry-after': '0' } }
    if (ids!.includes(poison.id)) return { status: 400, body: 'bad event' }
    return null
  }
  const sink = cloudEventsSink({ url, secret: SECRET, source: ORG, batchSize: 100 })
  const exporter = startExporter([sink], { sql: db.sql, organizationId: ORG, log: createLogger('warn', new LogSink()), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 10, maxMs: 100 } })
  await waitFor('the export to catch up', async () => (await exportStatus(db.sql, ORG))[0]?.pending === 0)
  await exporter.stop()

  const ledger = await db.sql<{ id: string, cost: string | null, billed: string | null, prompt: number | null }[]>`SELECT coalesce(generation_id, event_id::text) AS id,
      cost_usd::text AS cost, billed_cost_usd::text AS billed, prompt_tokens AS prompt FROM usage_events`
  const ids = new Set(ledger.map((r) => r.id))
  ids.delete(poison.id)
  t.same(ce.problems, [], 'every batch was signed and well formed')
  t.same(new Set([...ce.events.values()].map((e) => e.id)), ids, 'every row but the refused one arrived')
  t.equal(ce.accepted.length, ce.events.size, 'none twice under its id')
  t.ok(Math.max(...ce.batches) <= 100, 'batches of at most CLOUDEVENTS_BATCH_SIZE')
  const refusal = [...ce.events.values()].find((e) => e.id === '00000000-0000-4000-8000-000000000001')!
  t.equal(refusal.data.outcome, 'budget_exceeded', 'a refusal is exported with its outcome')
  t.same(refusal.data.groups, ['g-a', 'g-b'])
  t.equal(refusal.subject, 'u-anna', 'subject is the user')
  t.equal(refusal.type, 'com.usage-proxy.generation')
  t.equal(refusal.source, ORG)
  for (const k of ['generation_id', 'organization_id', 'user_id', 'groups', 'model', 'kind', 'outcome', 'prompt_tokens', 'completion_tokens', 'cost_usd', 'billed_cost_usd']) {
    t.ok(k in refusal.data, `data.${k} present`)
  }
  const kept = ledger.filter((r) => r.id !== poison.id)
  const sum = (xs: Array<string | null>): string => sumDecimals(xs.filter((x): x is string => x !== null))
  const events = [...ce.events.values()]
  t.equal(sum(events.map((e) => e.data.billed_cost_usd)).replace(/\.?0+$/, ''), sum(kept.map((r) => r.billed)).replace(/\.?0+$/, ''), 'billed cost sums to the digit')
  t.equal(sum(events.map((e) => e.data.cost_usd)).replace(/\.?0+$/, ''), sum(kept.map((r) => r.cost)).replace(/\.?0+$/, ''), 'cost sums to the digit')
  t.equal(sum(events.map((e) => e.data.prompt_tokens)), sum(kept.map((r) => r.prompt === null ? null : String(r.prompt))), 'prompt tokens sum')
  t.ok(events.every((e) => e.data.billed_cost_usd === null || typeof e.data.billed_cost_usd === 'string'), 'money travels as decimal strings')
  const [status] = await exportStatus(db.sql, ORG)
  t.equal(status.rowsSetAside, '1', 'the refused event is set aside')
  t.equal(status.setAside[0].eventId.length, 36)
  t.match(status.setAside[0].reason, /HTTP 400/)
  t.ok(Number(status.failures) >= 1, 'the outage is counted as failures')
})
