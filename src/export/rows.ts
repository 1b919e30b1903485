import type { Sql } from '../db/connect.js'
import type { ExportRow } from './sink.js'

// Reading the ledger in the export order. The order is (coalesce(export_xid, 0), created_at,
// event_id): rows from before the export existed (export_xid NULL, all committed) first, then by
// inserting transaction. Only rows below the horizon, pg_snapshot_xmin() of a fresh snapshot,
// are read: every transaction below it has ended, so no row can still commit behind the cursor
// (sql/021_export.sql says why a transaction id, not a timestamp or a sequence).

/** A position in the export order: every row before it is handled. */
export interface Position { xid: string, createdAt: string, eventId: string }

export const START: Position = { xid: '0', createdAt: '-infinity', eventId: '00000000-0000-0000-0000-000000000000' }

/** A row with its position, so the layer can move the cursor past it. */
export interface PlacedRow { row: ExportRow, at: Position }

/**
 * How many transaction ids one read looks across, at first. Rows within a window are sorted
 * without an index (the BRIN index only narrows the blocks), so the window adapts to the rows'
 * density: a read that came back full narrows the next one to about as many ids as held that
 * many rows, a read that came back short widens it (up to MAX_WINDOW).
 */
export const XID_WINDOW = 100_000n
const MAX_WINDOW = 1_000_000n

const COLUMNS = `event_id::text AS event_id, generation_id, organization_id, user_id, external_user_id, groups, api_key_id,
  endpoint, coalesce(served_model, model) AS model, model AS requested_model, provider, kind, outcome, status, streamed,
  prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens,
  cost_usd::text AS cost_usd, billed_cost_usd::text AS billed_cost_usd, latency_ms::float8 AS latency_ms,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at_iso,
  created_at::text AS created_at_raw, coalesce(export_xid, 0)::text AS xid`

interface DbRow {
  event_id: string, generation_id: string | null, organization_id: string, user_id: string | null, external_user_id: string
  groups: string[], api_key_id: string | null, endpoint: string, model: string | null, requested_model: string | null
  provider: string | null, kind: string, outcome: string, status: number, streamed: boolean
  prompt_tokens: number | null, completion_tokens: number | null, total_tokens: number | null, cached_tokens: number | null
  reasoning_tokens: number | null, cost_usd: string | null, billed_cost_usd: string | null, latency_ms: number | null
  created_at_iso: string, created_at_raw: string, xid: string
}

function place (r: DbRow): PlacedRow {
  return {
    at: { xid: r.xid, createdAt: r.created_at_raw, eventId: r.event_id },
    row: {
      eventId: r.event_id, generationId: r.generation_id, organizationId: r.organization_id, userId: r.user_id,
      externalUserId: r.external_user_id, groups: r.groups ?? [], apiKeyId: r.api_key_id, endpoint: r.endpoint,
      model: r.model, requestedModel: r.requested_model, provider: r.provider, kind: r.kind, outcome: r.outcome,
      status: r.status, streamed: r.streamed, promptTokens: r.prompt_tokens, completionTokens: r.completion_tokens,
      totalTokens: r.total_tokens, cachedTokens: r.cached_tokens, reasoningTokens: r.reasoning_tokens,
      costUsd: r.cost_usd, billedCostUsd: r.billed_cost_usd, latencyMs: r.latency_ms, createdAt: r.created_at_iso,
    },
  }
}

/** The oldest transaction still running: everything below it has committed or rolled back. */
export async function horizon (sql: Sql): Promise<bigint> {
  const [h] = await sql<{ h: string }[]>`SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS h`
  return BigInt(h.h)
}

export interface Batch {
  rows: PlacedRow[]
  /** Where the cursor may go when every row of `rows` is handled (past rows read and rows known absent). */
  end: Position
  /** The window to read across next time. */
  window?: bigint
}

/**
 * The next rows after `from` for one organization and sink, at most `limit`, leaving out rows
 * acknowledged or set aside past the cursor. `end` is the position after the last row, or, when
 * the read found fewer rows than asked, the furthest point it proved empty.
 */
export async function readBatch (sql: Sql, org: string, sink: string, from: Position, limit: number, window: bigint = XID_WINDOW): Promise<Batch> {
  if (from.xid === '0') {
    const rows = await sql.unsafe<DbRow[]>(`SELECT ${COLUMNS} FROM usage_events e
      WHERE organization_id = $1 AND export_xid IS NULL AND (created_at, event_id) > ($2::text::timestamptz, $3::uuid)
        AND NOT EXISTS (SELECT 1 FROM export_acks a WHERE a.organization_id = $1 AND a.sink = $4 AND a.event_id = e.event_id)
        AND NOT EXISTS (SELECT 1 FROM export_set_aside s WHERE s.organization_id = $1 AND s.sink = $4 AND s.event_id = e.event_id)
      ORDER BY created_at, event_id LIMIT $5`, [org, from.createdAt, from.eventId, sink, limit])
    const placed = rows.map(place)
    if (placed.length === limit) return { rows: placed, end: placed[placed.length - 1].at }
    // The rows from before the export are all read: the ordered part starts at the organization's
    // lowest transaction id (read once, so a sink's first start does not step through every
    // transaction id the cluster ever used). The horizon comes first: every transaction below it
    // has ended, so the lowest id read after it covers each of their rows. Read the other way
    // round, a transaction that commits between the two reads has rows below the start: skipped.
    const h = await horizon(sql)
    const [first] = await sql.unsafe<Array<{ x: string | null }>>(
      'SELECT min(export_xid)::text AS x FROM usage_events WHERE organization_id = $1 AND export_xid IS NOT NULL', [org])
    // Not above the horizon: a transaction still open below the lowest committed row may add rows.
    const start = first?.x !== null && first?.x !== undefined && BigInt(first.x) < h ? BigInt(first.x) : h
    return { rows: placed, end: { ...START, xid: (start < 1n ? 1n : start).toString() } }
  }
  const h = await horizon(sql)
  const lo = BigInt(from.xid)
  const hi = lo + window < h ? lo + window : h
  if (hi <= lo) return { rows: [], end: from, window }
  const rows = await sql.unsafe<DbRow[]>(`SELECT ${COLUMNS} FROM usage_events e
    WHERE organization_id = $1 AND export_xid >= $2::bigint AND export_xid < $3::bigint
      AND (export_xid, created_at, event_id) > ($2::bigint, $4::text::timestamptz, $5::uuid)
      AND NOT EXISTS (SELECT 1 FROM export_acks a WHERE a.organization_id = $1 AND a.sink = $6 AND a.event_id = e.event_id)
      AND NOT EXISTS (SELECT 1 FROM export_set_aside s WHERE s.organization_id = $1 AND s.sink = $6 AND s.event_id = e.event_id)
    ORDER BY export_xid, created_at, event_id LIMIT $7`, [org, from.xid, hi.toString(), from.createdAt, from.eventId, sink, limit])
  const placed = rows.map(place)
  if (placed.length === limit) {
    const last = placed[placed.length - 1].at
    return { rows: placed, end: last, window: BigInt(last.xid) - lo + 1n }
  }
  // Fewer than asked: nothing else lies below `hi`, and nothing can commit there any more.
  const wider = placed.length < limit / 4 ? window * 4n : window
  return { rows: placed, end: { ...START, xid: hi.toString() }, window: wider > MAX_WINDOW ? MAX_WINDOW : wider }
}

/**
 * Rows of one organization created from `from` on that the sink has handled (behind its cursor,
 * or acknowledged or set aside past it), in export order after `after`: a deliberate resend.
 */
export async function readHandledSince (sql: Sql, org: string, sink: string, from: string, cursor: Position, after: Position, limit: number): Promise<PlacedRow[]> {
  const rows = await sql.unsafe<DbRow[]>(`SELECT ${COLUMNS} FROM usage_events e
    WHERE organization_id = $1 AND created_at >= $2::text::timestamptz
      AND (coalesce(export_xid, 0), created_at, event_id) > ($3::bigint, $4::text::timestamptz, $5::uuid)
      AND ((coalesce(export_xid, 0), created_at, event_id) <= ($6::bigint, $7::text::timestamptz, $8::uuid)
        OR EXISTS (SELECT 1 FROM export_acks a WHERE a.organization_id = $1 AND a.sink = $9 AND a.event_id = e.event_id)
        OR EXISTS (SELECT 1 FROM export_set_aside s WHERE s.organization_id = $1 AND s.sink = $9 AND s.event_id = e.event_id))
    ORDER BY coalesce(export_xid, 0), created_at, event_id LIMIT $10`,
  [org, from, after.xid, after.createdAt, after.eventId, cursor.xid, cursor.createdAt, cursor.eventId, sink, limit])
  return rows.map(place)
}
