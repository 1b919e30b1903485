import type { Backlog } from '../usage/ledger/ledger.js'
import { sendJson, type AdminRoute } from './router.js'

// GET /admin/v1/ledger: what this sidecar holds back from Postgres, read from memory (the page
// shows it above the usage, which is only as complete as the ledger's last commit). It answers
// while the database does not.

export function ledgerRoutes (backlog: () => Backlog | null): AdminRoute[] {
  return [{
    method: 'GET',
    path: /^\/admin\/v1\/ledger\/?$/,
    handle: ({ res }) => {
      const b = backlog() ?? { records: 0, oldestSeconds: 0, stalledSeconds: 0, lastError: null }
      sendJson(res, 200, {
        object: 'ledger',
        backlog_records: b.records,
        oldest_waiting_seconds: Math.round(b.oldestSeconds),
        stalled_seconds: Math.round(b.stalledSeconds),
        last_error: b.lastError,
      })
    },
  }]
}
