import type { AdminDeps } from './deps.js'
import { admissionRoutes } from './admissions.js'
import { allowlistRoutes } from './allowlists.js'
import { auditRoutes } from './audit.js'
import { budgetRoutes } from './budgets.js'
import { noBudgetsFor } from '../budgets/status-for.js'
import { keyRoutes } from './keys.js'
import { ledgerRoutes } from './ledger.js'
import { pageRoutes } from './page.js'
import { createAdmin, sendJson, type AdminHandler, type AdminRoute } from './router.js'
import { storageRoutes } from './storage.js'
import { sessionRoutes } from './session.js'
import { usageRoutes } from './usage.js'
import { billingCustomerRoutes } from './billing-customers.js'
import { exportRoutes } from './export.js'

export type { AdminDeps } from './deps.js'

// Every admin route, in one list. Each concern (budgets, usage, the page) lives in a file of its
// own and adds its routes here.

export function adminRoutes (deps: AdminDeps): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: /^\/admin\/v1\/?$/,
      handle: ({ res }) => sendJson(res, 200, { object: 'admin', organization: deps.config.organization.id, organization_name: deps.config.organization.name }),
    },
    ...budgetRoutes({ config: deps.config, sql: deps.sql, changed: deps.budgetsChanged }),
    ...keyRoutes({ organizationId: deps.config.organization.id, sql: deps.sql, ring: deps.keys, budgetsChanged: deps.budgetsChanged }),
    ...allowlistRoutes({ config: deps.config, sql: deps.sql, changed: deps.allowlistsChanged }),
    ...auditRoutes({ organizationId: deps.config.organization.id, sql: deps.sql, forgotten: deps.userForgotten }),
    ...storageRoutes(deps),
    ...admissionRoutes({ failMode: deps.config.limits.failMode, stats: deps.admissions ?? (() => null) }),
    ...ledgerRoutes(deps.backlog ?? (() => null)),
    ...usageRoutes({ organizationId: deps.config.organization.id, organizationName: deps.config.organization.name, readSql: deps.readSql, budgetsFor: deps.budgetsFor ?? noBudgetsFor }),
    ...billingCustomerRoutes({ organizationId: deps.config.organization.id, sql: deps.sql }),
    ...exportRoutes({
      organizationId: deps.config.organization.id, sql: deps.sql, readings: deps.exportReadings ?? (() => []),
      configured: [...(deps.config.export.stripe ? ['stripe'] : []), ...(deps.config.export.cloudEvents ? ['cloudevents'] : [])],
    }),
    ...sessionRoutes(deps.config.admin.apiKey ?? ''),
    ...pageRoutes(),
  ]
}

export function createAdminPlane (deps: AdminDeps): AdminHandler | null {
  const key = deps.config.admin.apiKey
  return key ? createAdmin(key, adminRoutes(deps), deps.log) : null
}
