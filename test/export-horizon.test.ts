import t from 'tap'
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import { createTestDb, withoutServer } from './support/db.js'
import { readBatch, START, type Position } from '../src/export/rows.js'

// The export's first read of an organization: after the rows from before the export, the ordered
// part starts at the lowest transaction id of the organization's rows, but never above the
// horizon. Here a transaction that inserted a row (id X1) is still open while a later one (X2)
// has committed, and it commits in between the read's queries. Its row must still be read: a
// start taken from a lowest id read before the horizon would be X2, past X1's row for good.

const ORG = 'mai_client_horizon'
const SINK = 'otel'

t.test('a transaction that commits during the first read: its row is read, not skipped', async (t) => {
  if (await withoutServer(t, 'two transactions open at once')) return
  const db = await createTestDb({ migrated: true })
  const writer = postgres(db.url, { max: 1, onnotice: () => {} })
  const reader = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(async () => { await writer.end({ timeout: 1 }); await reader.end({ timeout: 1 }); await db.drop() })
  await db.sql`insert into organizations (id, name, markup_percent) values (${ORG}, 'Horizon', '0')`
  const insert = (sql: postgres.Sql<{}> | postgres.TransactionSql<{}>, id: string) => sql`insert into usage_events
      (event_id, generation_id, organization_id, external_user_id, endpoint, model, provider, streamed, status, outcome,
       usage_source, prompt_tokens, completion_tokens, total_tokens, cost_usd, markup_percent, kind, created_at)
    values (${id}, ${'gen-' + id}, ${ORG}, ${ORG}, 'chat/completions', 'fake/ok', 'Fake', false, 200, 'ok',
       'inline', 1, 1, 2, '0.001', '0', 'chat', now())`

  // X1: a row inserted, not committed until told.
  const early = randomUUID()
  let commit: () => void = () => {}
  const told = new Promise<void>((resolve) => { commit = resolve })
  let inserted: () => void = () => {}
  const insertedEarly = new Promise<void>((resolve) => { inserted = resolve })
  const first = writer.begin(async (tx) => { await insert(tx, early); inserted(); await told })
  await insertedEarly
  // X2: a later transaction, committed.
  const late = randomUUID()
  await insert(db.sql, late)
  const [{ x1, x2 }] = await db.sql<Array<{ x1: string | null, x2: string }>>`
    select (select export_xid::text from usage_events where event_id = ${early}) as x1,
           (select export_xid::text from usage_events where event_id = ${late}) as x2`
  t.equal(x1, null, 'the early row is not visible yet')

  // The reader's pool, with X1 committed right after the read of the lowest transaction id.
  let hooked = false
  const unsafe = reader.unsafe.bind(reader)
  const sql = new Proxy(reader, {
    get (target, prop, receiver) {
      if (prop !== 'unsafe') return Reflect.get(target, prop, receiver)
      return (text: string, params?: unknown[]) => {
        const q = unsafe(text, params as never[])
        if (hooked || !text.includes('min(export_xid)')) return q
        hooked = true
        return q.then(async (rows) => { commit(); await first; return rows })
      }
    },
  }) as postgres.Sql<{}>

  const seen = new Set<string>()
  let at: Position = START
  const batch = await readBatch(sql as never, ORG, SINK, at, 100)
  for (const r of batch.rows) seen.add(r.row.eventId)
  at = batch.end
  t.ok(hooked, 'the first read asked for the lowest transaction id, and X1 committed right after')
  const [{ early: x1Now }] = await db.sql<Array<{ early: string }>>`select export_xid::text as early from usage_events where event_id = ${early}`
  t.ok(BigInt(x1Now) < BigInt(x2), `X1 ${x1Now} is below X2 ${x2}`)
  // Read on, as the exporter does, until the cursor is past both rows' transactions.
  for (const deadline = Date.now() + 20_000; BigInt(at.xid) <= BigInt(x2);) {
    if (Date.now() > deadline) throw new Error(`the reads did not pass X2 ${x2} in 20 s (at ${at.xid})`)
    const next = await readBatch(sql as never, ORG, SINK, at, 100)
    for (const r of next.rows) seen.add(r.row.eventId)
    at = next.end
    if (next.rows.length === 0) await new Promise((r) => setTimeout(r, 10))
  }
  t.ok(seen.has(late), 'the committed row is read')
  t.ok(seen.has(early), `the row of the transaction that committed during the first read is read too (cursor at ${at.xid}, X1 ${x1Now})`)
})
