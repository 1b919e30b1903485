import type { AdminDeps } from './deps.js'
import { sendJson, type AdminRoute } from './router.js'
import { sendError } from '../lib/errors.js'
import { monthRange, verifyRollups } from '../usage/reports/verify.js'

// The ledger's storage as an operator sees it: monthly partitions, the last maintenance run, and
// the rollup check of `usage-proxy verify`. Reads go to DATABASE_READ_URL when it is set.

export function storageRoutes (deps: AdminDeps): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: /^\/admin\/v1\/partitions\/?$/,
      handle: async ({ res }) => {
        const sql = deps.readSql()
        const partitions = await sql`
          select c.relname as name, pg_get_expr(c.relpartbound, c.oid) as bound,
                 greatest(c.reltuples, 0)::bigint::text as estimated_rows, pg_total_relation_size(c.oid)::text as bytes
          from pg_inherits i join pg_class c on c.oid = i.inhrelid
          where i.inhparent = 'usage_events'::regclass order by c.relname`
        const [last] = await sql`select ran_on::text, ran_at, detail from usage_maintenance`
        sendJson(res, 200, {
          object: 'list',
          data: partitions.map((p) => ({ object: 'partition', ...p })),
          retention_months: deps.config.retentionMonths ?? null,
          maintenance: last ? { ran_on: last.ran_on, ran_at: last.ran_at, ...last.detail } : null,
        })
      },
    },
    {
      method: 'GET',
      path: /^\/admin\/v1\/rollups\/verify\/?$/,
      handle: async ({ res, url }) => {
        const month = url.searchParams.get('month') ?? undefined
        if (month !== undefined) {
          try { monthRange(month) } catch (err) {
            return sendError(res, 400, 'invalid_request_error', 'invalid_month', (err as Error).message.replace('--month', 'month'))
          }
        }
        const r = await verifyRollups(deps.readSql(), { month })
        sendJson(res, 200, {
          object: 'rollup_verification', from: r.from, to: r.to, rollup_rows: r.rollupRows, raw_rows: r.rawRows, monthly_rollup_rows: r.monthlyRows, org_daily_rollup_rows: r.orgDailyRows,
          ok: r.differences.length === 0, differences: r.differences,
        })
      },
    },
  ]
}
