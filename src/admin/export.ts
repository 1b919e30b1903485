import type { Sql } from '../db/connect.js'
import type { SinkReadings } from '../export/exporter.js'
import { exportStatus } from '../export/status.js'
import { sendJson, type AdminRoute } from './router.js'

// GET /admin/v1/export: where each sink stands (from Postgres, the same on every replica), what
// this process's exporter sees, and the latest rows set aside with their reasons. The usage page
// shows it as a small panel.

export function exportRoutes (d: { organizationId: string, sql: () => Sql, readings: () => SinkReadings[], configured: string[] }): AdminRoute[] {
  return [{
    method: 'GET',
    path: /^\/admin\/v1\/export\/?$/,
    handle: async ({ req, res }) => {
      req.resume()
      const stored = await exportStatus(d.sql(), d.organizationId)
      const local = new Map(d.readings().map((r) => [r.sink, r]))
      const names = [...new Set([...d.configured, ...stored.map((s) => s.sink)])].sort()
      sendJson(res, 200, {
        object: 'list',
        data: names.map((name) => {
          const s = stored.find((x) => x.sink === name)
          const l = local.get(name)
          return {
            sink: name,
            configured: d.configured.includes(name),
            lease_holder: s?.holder ?? null,
            lease_expires_at: s?.leaseExpiresAt ?? null,
            held_here: l?.holding ?? false,
            rows_sent: s?.rowsSent ?? '0',
            rows_set_aside: s?.rowsSetAside ?? '0',
            failures: s?.failures ?? '0',
            pending: s?.pending ?? 0,
            pending_capped: s?.pendingCapped ?? false,
            lag_seconds: s?.lagSeconds ?? 0,
            last_sent_at: s?.lastSentAt ?? null,
            last_error: s?.lastError ?? null,
            last_error_at: s?.lastErrorAt ?? null,
            set_aside: (s?.setAside ?? []).map((a) => ({ event_id: a.eventId, created_at: a.createdAt, reason: a.reason, set_aside_at: a.setAsideAt })),
          }
        }),
      })
    },
  }]
}
