import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createTestDb, withoutServer, type TestDb } from './support/db.js'
import { FakeCloudEvents } from './support/billing-receivers.js'
import { LogSink } from './support/log-sink.js'
import { migrate } from '../src/db/migrate.js'
import { createLogger } from '../src/lib/log.js'
import { startExporter } from '../src/export/exporter.js'
import { cloudEventsSink } from '../src/export/cloudevents-sink.js'
import { copyLedger } from '../src/db/copy-ledger.js'

// `usage-proxy db export` copies the embedded ledger into a PostgreSQL server. Transaction ids
// are the source cluster's: the embedded database may be millions of ids ahead of a fresh server.
// The copied export cursor then sits above every id the server hands out for a long time, and a
// row recorded on the server after the move sorts below it: never exported. The copied rows the
// source's exporter delivered must not be sent again either.

const ORG = 'org_attack_s10c_copy'
const AHEAD = 50_000_000
let source: TestDb
let target: TestDb
let ce: FakeCloudEvents

t.before(async () => {
  source = await createTestDb({ migrated: true })
  target = await createTestDb({ migrated: true })
  await migrate(source.sql, 'sql')
  await migrate(target.sql, 'sql')
  ce = new FakeCloudEvents(undefined)
})
t.teardown(async () => { await ce.server.close(); await source.drop(); await target.drop() })

async function insert (sql: TestDb['sql'], user: string): Promise<string> {
  const id = randomUUID()
  await sql`INSERT INTO usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
    VALUES (${id}, ${'gen-' + id}, ${ORG}, ${user}, 'x', 'chat/completions', 'm', false, 200, 'ok', 'inline', '0.001', '0', now() - interval '1 hour')`
  return 'gen-' + id
}

t.test('after a copy from a source whose transaction ids run ahead, new rows are exported and copied ones are not resent', async (t) => {
  if (await withoutServer(t, 'transaction ids and the export horizon of a server cluster')) return
  await source.sql`INSERT INTO organizations (id, name, markup_percent) VALUES (${ORG}, 'Attack', '0')`
  const delivered = [await insert(source.sql, 'u-anna'), await insert(source.sql, 'u-bob')]
  const waiting = await insert(source.sql, 'u-chen')
  // The source's own exporter delivered the first two rows: its cursor stands after them. The
  // source cluster's ids are AHEAD of the target's (an embedded database that ran for months).
  await source.sql`UPDATE usage_events SET export_xid = export_xid + ${AHEAD}`
  const [second] = await source.sql<{ x: string, c: string, e: string }[]>`SELECT export_xid::text AS x, created_at::text AS c, event_id::text AS e
    FROM usage_events WHERE generation_id = ${delivered[1]}`
  await source.sql`INSERT INTO export_cursors (organization_id, sink, xid, created_at, event_id, rows_sent)
    VALUES (${ORG}, 'cloudevents', ${second.x}::bigint, ${second.c}::text::timestamptz, ${second.e}::uuid, 2)`

  await copyLedger(source.sql, target.sql)
  const fresh = await insert(target.sql, 'u-anna')

  const url = await ce.listen()
  const sink = cloudEventsSink({ url, source: 'test', batchSize: 10 })
  const exporter = startExporter([sink], { sql: target.sql, organizationId: ORG, log: createLogger('warn', new LogSink()), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 10, maxMs: 50 } })
  // Delivered means received: idle alone can come early while another transaction of the cluster
  // holds the horizon below the new row.
  const deadline = Date.now() + 30_000
  while (!ce.accepted.some((e) => e.id === fresh) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  await exporter.idle()
  await exporter.stop()
  const ids = ce.accepted.map((e) => e.id).sort()
  t.same(ids, [waiting, fresh].sort(), 'the row the source had not delivered and the row recorded after the move, each once; the delivered ones not again')
})
