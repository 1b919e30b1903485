import type { Sql } from '../db/connect.js'

// Where each sink stands, from Postgres (so every replica and `usage-proxy export status` see the
// same): its cursor, who holds its lease, what it has done, and what waits. `pending` counts rows
// not yet handled, up to a cap so a status read stays cheap on a large backlog.

export interface SinkStatus {
  sink: string
  holder: string | null
  leaseExpiresAt: string | null
  rowsSent: string
  rowsSetAside: string
  failures: string
  lastSentAt: string | null
  lastError: string | null
  lastErrorAt: string | null
  /** Rows waiting (committed, not acknowledged or set aside), capped at PENDING_CAP. */
  pending: number
  pendingCapped: boolean
  /** Seconds since the oldest waiting row was created; 0 when none waits. */
  lagSeconds: number
  setAside: Array<{ eventId: string, createdAt: string, reason: string, setAsideAt: string }>
}

export const PENDING_CAP = 100_000

const ts = (col: string): string => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')`

export async function exportStatus (sql: Sql, org: string, setAsideLimit = 20): Promise<SinkStatus[]> {
  const cursors = await sql.unsafe<Array<Record<string, string | null>>>(`SELECT c.sink, l.holder, ${ts('l.expires_at')} AS lease_expires_at,
      c.rows_sent::text, c.rows_set_aside::text, c.failures::text, ${ts('c.last_sent_at')} AS last_sent_at, c.last_error,
      ${ts('c.last_error_at')} AS last_error_at, c.xid::text, c.created_at::text AS c_created_at, c.event_id::text AS c_event_id,
      (l.expires_at > now()) AS live
    FROM export_cursors c LEFT JOIN export_leases l USING (organization_id, sink)
    WHERE c.organization_id = $1 ORDER BY c.sink`, [org])
  const out: SinkStatus[] = []
  for (const c of cursors) {
    const [p] = await sql.unsafe<Array<{ n: string, oldest: number | null }>>(`SELECT count(*)::text AS n,
        extract(epoch FROM now() - min(created_at))::float8 AS oldest FROM (
        SELECT e.event_id, e.created_at FROM usage_events e
        WHERE e.organization_id = $1 AND (coalesce(e.export_xid, 0), e.created_at, e.event_id) > ($2::bigint, $3::text::timestamptz, $4::uuid)
          AND NOT EXISTS (SELECT 1 FROM export_acks a WHERE a.organization_id = $1 AND a.sink = $5 AND a.event_id = e.event_id)
          AND NOT EXISTS (SELECT 1 FROM export_set_aside s WHERE s.organization_id = $1 AND s.sink = $5 AND s.event_id = e.event_id)
        LIMIT ${PENDING_CAP}) w`, [org, c.xid, c.c_created_at, c.c_event_id, c.sink])
    const aside = await sql.unsafe<Array<{ event_id: string, created_at: string, reason: string, set_aside_at: string }>>(`SELECT event_id::text,
        ${ts('row_created_at')} AS created_at, reason, ${ts('set_aside_at')} AS set_aside_at
      FROM export_set_aside WHERE organization_id = $1 AND sink = $2 ORDER BY set_aside_at DESC, event_id LIMIT $3`, [org, c.sink, setAsideLimit])
    const pending = Number(p.n)
    out.push({
      sink: c.sink!,
      holder: c.live ? c.holder : null,
      leaseExpiresAt: c.live ? c.lease_expires_at : null,
      rowsSent: c.rows_sent!, rowsSetAside: c.rows_set_aside!, failures: c.failures!,
      lastSentAt: c.last_sent_at, lastError: c.last_error, lastErrorAt: c.last_error_at,
      pending, pendingCapped: pending >= PENDING_CAP,
      lagSeconds: pending === 0 ? 0 : Math.max(0, Math.round(p.oldest ?? 0)),
      setAside: aside.map((a) => ({ eventId: a.event_id, createdAt: a.created_at, reason: a.reason, setAsideAt: a.set_aside_at })),
    })
  }
  return out
}
