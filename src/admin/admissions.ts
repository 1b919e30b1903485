import type { FailOpenStats } from '../budgets/fail-open.js'
import { sendJson, type AdminRoute } from './router.js'

// GET /admin/v1/admissions: how many requests this process served without a spend check
// (BUDGET_FAIL_MODE=open while Postgres did not answer), for the usage page's warning. Read from
// memory, never from the database: it must answer precisely when the database does not.

export function admissionRoutes (deps: { failMode: 'open' | 'closed', stats: () => FailOpenStats | null }): AdminRoute[] {
  return [{
    method: 'GET',
    path: /^\/admin\/v1\/admissions\/?$/,
    handle: ({ res }) => {
      const s = deps.stats()
      sendJson(res, 200, {
        object: 'admissions',
        fail_mode: deps.failMode,
        failed_open: s?.total ?? 0,
        last_failed_open_at: s?.lastAt?.toISOString() ?? null,
        last_reason: s?.lastReason ?? null,
      })
    },
  }]
}
