import type { Sql } from '../db/connect.js'
import { fence, type Lease } from './lease.js'
import type { Batch, Position } from './rows.js'
import type { RowResult, Sink } from './sink.js'

// Writing down what a batch achieved, in one fenced transaction: rows acknowledged, rows set
// aside with their reason, and the cursor moved past the longest run of handled rows from the
// start of the batch. A row answered 'retry' stops the cursor there; rows after it that went
// through are remembered in export_acks, so they are not sent again when the cursor gets to them.

export interface Outcome { sent: number, setAside: number, retry: number, cursor: Position }

export async function recordBatch (sql: Sql, lease: Lease, ttlMs: number, sink: Sink, batch: Batch, results: readonly RowResult[]): Promise<Outcome> {
  const { rows } = batch
  if (results.length !== rows.length) throw new Error(`sink ${sink.name} answered ${results.length} results for ${rows.length} rows`)
  let run = 0
  while (run < rows.length && results[run].status !== 'retry') run++
  const cursor = run === rows.length ? batch.end : run === 0 ? null : rows[run - 1].at
  const acked = rows.filter((_, i) => i >= run && results[i].status === 'ok').map((r) => r.at)
  const setAside = rows.flatMap((r, i) => { const res = results[i]; return res.status === 'rejected' ? [{ r, reason: res.reason }] : [] })
  const sent = results.filter((r) => r.status === 'ok').length
  const retry = results.filter((r) => r.status === 'retry').length
  let moved: Position = batch.rows.length === 0 ? batch.end : rows[0].at
  await sql.begin(async (tx) => {
    await fence(tx, lease, ttlMs)
    if (acked.length > 0) {
      await tx`INSERT INTO export_acks (organization_id, sink, xid, created_at, event_id)
        SELECT ${lease.org}, ${lease.sink}, x::bigint, c::text::timestamptz, e::uuid
        FROM unnest(${acked.map((a) => a.xid)}::text[], ${acked.map((a) => a.createdAt)}::text[], ${acked.map((a) => a.eventId)}::text[]) AS u(x, c, e)
        ON CONFLICT DO NOTHING`
    }
    if (setAside.length > 0) {
      await tx`INSERT INTO export_set_aside (organization_id, sink, event_id, row_created_at, reason)
        SELECT ${lease.org}, ${lease.sink}, e::uuid, c::text::timestamptz, r
        FROM unnest(${setAside.map((s) => s.r.row.eventId)}::text[], ${setAside.map((s) => s.r.at.createdAt)}::text[], ${setAside.map((s) => s.reason.slice(0, 1000))}::text[]) AS u(e, c, r)
        ON CONFLICT DO NOTHING`
    }
    const firstError = results.find((r) => r.status === 'retry') as { reason: string } | undefined
    const [c] = await tx<{ xid: string, created_at: string, event_id: string }[]>`UPDATE export_cursors SET
        rows_sent = rows_sent + ${sent}, rows_set_aside = rows_set_aside + ${setAside.length},
        failures = failures + ${retry > 0 ? 1 : 0},
        last_sent_at = CASE WHEN ${sent} > 0 THEN now() ELSE last_sent_at END,
        last_error = coalesce(${firstError?.reason?.slice(0, 500) ?? null}, last_error),
        last_error_at = CASE WHEN ${retry > 0} THEN now() ELSE last_error_at END,
        updated_at = now()
      WHERE organization_id = ${lease.org} AND sink = ${lease.sink}
      RETURNING xid::text, created_at::text, event_id::text`
    moved = { xid: c.xid, createdAt: c.created_at, eventId: c.event_id }
    if (cursor !== null) {
      await tx`UPDATE export_cursors SET xid = ${cursor.xid}::bigint, created_at = ${cursor.createdAt}::text::timestamptz, event_id = ${cursor.eventId}::uuid
        WHERE organization_id = ${lease.org} AND sink = ${lease.sink}`
      // Acknowledgements the cursor has now passed are kept by the cursor itself.
      await tx`DELETE FROM export_acks WHERE organization_id = ${lease.org} AND sink = ${lease.sink}
        AND (xid, created_at, event_id) <= (${cursor.xid}::bigint, ${cursor.createdAt}::text::timestamptz, ${cursor.eventId}::uuid)`
      moved = cursor
    }
    if (sink.settle) await sink.settle(tx, rows.map((r) => r.row), results)
  })
  return { sent, setAside: setAside.length, retry, cursor: moved }
}

/** The cursor as stored, for a holder starting to read. */
export async function readCursor (sql: Sql, org: string, sink: string): Promise<Position> {
  const [c] = await sql<{ xid: string, created_at: string, event_id: string }[]>`SELECT xid::text, created_at::text, event_id::text
    FROM export_cursors WHERE organization_id = ${org} AND sink = ${sink}`
  if (!c) throw new Error(`no export cursor for sink ${sink}`)
  return { xid: c.xid, createdAt: c.created_at, eventId: c.event_id }
}
