import type { Config } from '../config/config.js'
import type { Sql } from '../db/connect.js'
import type { Logger } from '../lib/log.js'
import type { FailOpenStats } from '../budgets/fail-open.js'
import type { BudgetsFor } from '../budgets/status-for.js'
import type { Backlog } from '../usage/ledger/ledger.js'
import type { KeyRouteDeps } from './keys.js'
import type { SinkReadings } from '../export/exporter.js'

// What the admin plane is given by the composition: connections, the logger and readings of the
// running process.

export interface AdminDeps {
  config: Config
  /** The primary: writes, budgets. */
  sql: () => Sql
  /** Reads for reports (DATABASE_READ_URL when set, else the primary). */
  readSql: () => Sql
  log: Logger
  /** Tells the admission of this process that budgets changed. */
  budgetsChanged?: () => void
  /** Tells this process that a model allowlist changed: it re-reads them before answering. */
  allowlistsChanged?: () => Promise<void>
  /** A user was forgotten: this process's user directory and caches let go of the id. */
  userForgotten?: (userId: string) => void
  /** Users' budgets for the usage views, in one read; the budgets module provides it. */
  budgetsFor?: BudgetsFor
  /** Admissions served without a spend check (the page shows them). */
  admissions?: () => FailOpenStats | null
  /** The ledger's backlog, from memory. */
  backlog?: () => Backlog | null
  /** This replica's API keys: a key made or revoked here takes effect here at once. */
  keys?: KeyRouteDeps['ring']
  /** This process's exporter, per sink (empty when no sink is configured or boot is not done). */
  exportReadings?: () => SinkReadings[]
}
