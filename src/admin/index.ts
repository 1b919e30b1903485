import type { Config } from '../config/config.js'
import type { Sql } from '../db/connect.js'
import type { Logger } from '../log.js'
import { admissionRoutes } from './admissions.js'
import { budgetRoutes } from './budgets.js'
import type { FailOpenStats } from '../budgets/fail-open.js'
import { noBudgetsFor, type BudgetsFor } from '../usage/budget-seam.js'
import { ledgerRoutes } from './ledger.js'
import type { Backlog } from '../usage/ledger.js'
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
  /** Users' budgets for the usage views, in one read; the budgets module provides it. */
  budgetsFor?: BudgetsFor
  /** Admissions served without a spend check (the page shows them). */
  admissions?: () => FailOpenStats | null
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
    ...admissionRoutes({ failMode: deps.config.limits.failMode, stats: deps.admissions ?? (() => null) }),
    ...ledgerRoutes(deps.backlog ?? (() => null)),
    ...usageRoutes({ organizationId: deps.config.organization.id, readSql: deps.readSql, budgetsFor: deps.budgetsFor ?? noBudgetsFor }),
    ...sessionRoutes(deps.config.admin.apiKey ?? ''),
    ...pageRoutes(),
  ]
}

export function createAdminPlane (deps: AdminDeps): AdminHandler | null {
  const key = deps.config.admin.apiKey
  return key ? createAdmin(key, adminRoutes(deps), deps.log) : null
}
