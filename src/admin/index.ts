import type { Config } from '../config/config.js'
import type { Sql } from '../db/connect.js'
import type { Logger } from '../log.js'
import { budgetRoutes } from './budgets.js'
import { ledgerRoutes } from './ledger.js'
import type { Backlog } from '../usage/ledger.js'
import { noBudgets, type BudgetFor } from '../usage/budget-seam.js'
import { pageRoutes } from './page.js'
import { createAdmin, sendJson, type AdminHandler, type AdminRoute } from './router.js'
import { storageRoutes } from './storage.js'
import { sessionRoutes } from './session.js'
import { usageRoutes } from './usage.js'

// Every admin route, in one list. Each concern (budgets, usage, the page) lives in a file of its
// own and adds its routes here.

export interface AdminDeps {
  config: Config
  /** The primary: writes, budgets. Null until boot reached the database. */
  sql: () => Sql
  /** Reads for reports (DATABASE_READ_URL when set, else the primary). */
  readSql: () => Sql
  log: Logger
  /** Tells the admission of this process that budgets changed. */
  budgetsChanged?: () => void
  /** A user's budget for the usage views; the budgets module provides it (null: no budgets). */
  budgetFor?: BudgetFor
  /** The ledger's backlog, from memory (null before boot made the ledger). */
  backlog?: () => Backlog | null
}

export function adminRoutes (deps: AdminDeps): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: /^\/admin\/v1\/?$/,
      handle: ({ res }) => sendJson(res, 200, { object: 'admin', organization: deps.config.organization.id }),
    },
    ...budgetRoutes({ config: deps.config, sql: deps.sql, changed: deps.budgetsChanged }),
    ...storageRoutes(deps),
    ...ledgerRoutes(deps.backlog ?? (() => null)),
    ...usageRoutes({ organizationId: deps.config.organization.id, readSql: deps.readSql, budgetFor: deps.budgetFor ?? noBudgets }),
    ...sessionRoutes(deps.config.admin.apiKey ?? ''),
    ...pageRoutes(),
  ]
}

export function createAdminPlane (deps: AdminDeps): AdminHandler | null {
  const key = deps.config.admin.apiKey
  return key ? createAdmin(key, adminRoutes(deps), deps.log) : null
}
