import { join, resolve } from 'node:path'
import type { Config } from './config/config.js'
import { connect, redactUrl, type Sql } from './db/connect.js'
import { bounded } from './db/bounded.js'
import { postgresMended } from './db/postgres-mend.js'
import { startEmbedded, type EmbeddedDb } from './db/embedded.js'
import { migrate, type MigrationResult } from './db/migrate.js'
import { startPartitionMaintenance, type PartitionMaintainer } from './db/partitions.js'
import { upsertOrganization } from './db/organizations.js'
import { UserDirectory } from './identity/directory.js'
import type { Logger } from './lib/log.js'
import type { Upstream } from './proxy/upstream.js'
import type { Journal } from './usage/ledger/journal.js'
import { Ledger } from './usage/ledger/ledger.js'
import { fromIntent } from './usage/ledger/record.js'
import { Reconciler } from './usage/ledger/reconcile.js'
import { startRollupCompaction, type RollupCompactor } from './usage/ledger/rollups.js'
import { startLimits, type SpendControls } from './budgets/boot.js'
import type { Limits } from './budgets/limits.js'
import type { Allowlists } from './budgets/allowlists.js'
import { startKeyPoller, type KeyPoller } from './ops/openrouter-key.js'
import { KeyRing } from './keys/ring.js'

// What the sidecar needs Postgres for. Boot opens it step by step while the listener already
// answers /healthz, noting each piece in Services as it is made so that a stop at any point
// releases what exists; once every step is done it returns the pieces the data plane is built
// from (Booted), none of them missing.

/** What boot has opened so far: stop releases these, whichever exist. */
export interface Services {
  sql: Sql | null
  /**
   * Admissions' own connections (DATABASE_ADMISSION_POOL_MAX) on the primary: nothing else queries
   * through it, so a busy main pool never makes a budget check wait or fail open.
   */
  admissionSql: Sql | null
  /** DATABASE_READ_URL's pool, once it answers; reports use the primary until then. */
  readSql: Sql | null
  /**
   * The export's own connections (two, when a sink is on): its reads of the ledger,
   * its writes and its lease renewals never take a connection the ledger's inserts need.
   */
  exportSql: Sql | null
  embedded: EmbeddedDb | null
  maintenance: PartitionMaintainer | null
  compactor: RollupCompactor | null
  ledger: Ledger | null
  reconciler: Reconciler | null
  directory: UserDirectory | null
  spend: SpendControls | null
  keyPoller: KeyPoller | null
  /** The organization's API keys, re-read every API_KEYS_REFRESH_MS. */
  keys: KeyRing | null
}

export function noServices (): Services {
  return { sql: null, admissionSql: null, readSql: null, exportSql: null, embedded: null, maintenance: null, compactor: null, ledger: null, reconciler: null, directory: null, spend: null, keyPoller: null, keys: null }
}

/** What a finished boot opened: the data plane is built from these. */
export interface Booted {
  /** The primary: writes, budgets, "My usage". */
  sql: Sql
  /** Reports' pool: DATABASE_READ_URL's once it answers, the primary's until then. */
  readSql: () => Sql
  /** The export's pool: its own when a sink is on (the primary's on the embedded database). */
  exportSql: Sql
  ledger: Ledger
  reconciler: Reconciler
  directory: UserDirectory
  limits: Limits
  keys: KeyRing
  allowlists: Allowlists
}

export interface BootDeps {
  config: Config
  log: Logger
  journal: Journal
  upstream: Upstream
  sqlDir: string
  signal: AbortSignal
  isStopping: () => boolean
}

/** Steps 2-5 of the boot sequence (main.ts numbers them); resolves when traffic may be served. */
export async function bootServices (s: Services, { config, log, journal, upstream, sqlDir, signal, isStopping }: BootDeps): Promise<Booted> {
  // 2. the database: DATABASE_URL, or the embedded one under DATA_DIR
  let url = config.databaseUrl
  if (!url) {
    s.embedded = await startEmbedded(config.ledger.dataDir, config.db.embeddedPort, log)
    url = s.embedded.url
    log.info({ psql: s.embedded.psql }, 'no DATABASE_URL: using the embedded database; query it with psql')
    log.warn('the embedded database is for trying usage-proxy out: one process, a password-less superuser on loopback, several hundred MB of memory. ' +
      'In production set DATABASE_URL to a PostgreSQL server you back up (compose.example.yml runs one)')
  }
  // DATABASE_POOL_MAX connections (README "Many sidecars, one Postgres"), every query bounded by
  // DATABASE_QUERY_TIMEOUT_MS on this side: nothing waits on Postgres without a deadline.
  const pool = await connect({ url, log, retryMaxMs: config.db.connectRetryMaxMs, signal, max: s.embedded ? 1 : config.db.poolMax })
  if (!postgresMended()) log.warn('postgres.js is not mended (installed with --ignore-scripts?): run `node scripts/patch-postgres.mjs`, or a connection Postgres cuts mid-write can stay dead until restart, and queries pipelined through a pooler in transaction mode can wedge')
  const sql = s.sql = bounded(pool, config.db.queryTimeoutMs)
  // 3. schema, under a transaction-scoped advisory lock so sidecars booting together are safe,
  // through a pooler as well; over DATABASE_DIRECT_URL when the operator gives one.
  const migrated = await migrateOver(config.db.directUrl, pool, sqlDir, log, config.db.connectRetryMaxMs, signal)
  log.info({ applied: migrated.applied, alreadyApplied: migrated.skipped.length, database: redactUrl(config.db.directUrl ?? url) }, 'schema ready')
  // 3b. monthly partitions ahead and retention, by one replica a day (src/db/partitions.ts)
  s.maintenance = await startPartitionMaintenance(sql, log, { retentionMonths: config.retentionMonths })
  s.compactor = startRollupCompaction(sql, log)
  // Reports read from the replica once it answers; the primary serves them until then, so a
  // replica that is down never holds up boot or the data plane.
  if (config.databaseReadUrl) {
    void connect({ url: config.databaseReadUrl, variable: 'DATABASE_READ_URL', log, retryMaxMs: config.db.connectRetryMaxMs, signal, max: config.db.poolMax })
      .then((r) => { if (isStopping()) void r.end({ timeout: 0 }); else { s.readSql = bounded(r, config.db.queryTimeoutMs); log.info({ database: redactUrl(config.databaseReadUrl!) }, 'read replica ready for reports') } }, () => {})
  }
  // 4. the organization row
  const created = await upsertOrganization(sql, config.organization, config.openrouter.apiKey)
  log.info({ organization: config.organization.id, created, markupPercent: config.organization.markupPercent }, 'organization ready')
  // 5. replay what an earlier process journaled but never committed
  const ledger = s.ledger = new Ledger(sql, journal, log, {
    ...config.ledger,
    rejectedPath: join(resolve(config.ledger.dataDir), 'rejected.jsonl'),
    // Inserts in flight leave a connection of the pool to the request path and the admin plane.
    parallelBatches: Math.max(1, Math.min(3, config.db.poolMax - 1)),
  })
  const reconciler = s.reconciler = new Reconciler(upstream.fetchGeneration, (r) => ledger.record(r), log, { maxWaitMs: config.ledger.reconcileMaxWaitMs })
  const directory = s.directory = new UserDirectory(config.organization.id)
  // The embedded database runs one session for every connection: a second pool there could slip
  // a statement into the ledger's open transaction, so admissions share its single connection.
  const admissionSql = s.admissionSql = s.embedded
    ? sql
    : bounded(await connect({ url, log, retryMaxMs: config.db.connectRetryMaxMs, signal, max: config.db.admissionPoolMax }), config.limits.dbTimeoutMs, 'BUDGET_DB_TIMEOUT_MS')
  const spend = s.spend = await startLimits({ sql, admissionSql, config, upstream, log, record: (r) => ledger.record(r) })
  // Keys are read on the admissions' pool, so a busy main pool never delays a revocation. With
  // BUDGET_FAIL_MODE=closed, keys not re-read for five intervals (and a read's deadline) stop being trusted.
  const keys = s.keys = new KeyRing({
    readSql: admissionSql, writeSql: sql, organizationId: config.organization.id, log, refreshMs: config.keys.refreshMs,
    staleAfterMs: config.limits.failMode === 'closed' ? 5 * config.keys.refreshMs + config.limits.dbTimeoutMs : null,
  })
  await keys.start()
  // The export (main.ts step 7) gets connections of its own when a sink is on; on the embedded
  // database it shares the single one, as admissions do.
  const exporting = config.export.stripe !== null || config.export.cloudEvents !== null || config.export.otel !== null
  const exportSql = s.exportSql = !exporting || s.embedded
    ? sql
    : bounded(await connect({ url, log, retryMaxMs: config.db.connectRetryMaxMs, signal, max: EXPORT_POOL_MAX }), config.db.queryTimeoutMs)
  const replay = journal.replay()
  for (const r of replay.finals) ledger.record(r, true)
  // A pending line is the request as far as it got: 'interrupted' unless it had ended.
  for (const r of replay.pendings) reconciler.enqueue(r)
  // An intent alone: the request went upstream and its generation was never named. Its row has
  // no cost, only the estimate (a final line now, so the next replay finds it done).
  for (const r of replay.intents) ledger.record(fromIntent(r))
  if (replay.segments > 0) log.info({ records: replay.finals.length, toReconcile: replay.pendings.length, interrupted: replay.intents.length, tornLines: replay.tornLines }, 'journal replayed')
  if (replay.intents.length > 0) log.warn({ requests: replay.intents.length }, 'journal: requests interrupted before OpenRouter named their generation; recorded with their estimate only (usage-proxy verify lists them)')
  s.keyPoller = startKeyPoller(upstream.fetchKey, log)
  return { sql, readSql: () => s.readSql ?? sql, exportSql, ledger, reconciler, directory, limits: spend.limits, allowlists: spend.allowlists, keys }
}

/** The export's connections: one for its reads and writes, one for its lease renewals. */
const EXPORT_POOL_MAX = 2

/** A migration may build an index over a large table: its own, longer deadline. */
const MIGRATION_DEADLINE_MS = 10 * 60_000

async function migrateOver (directUrl: string | undefined, pool: Sql, sqlDir: string, log: Logger, retryMaxMs: number, signal: AbortSignal): Promise<MigrationResult> {
  if (!directUrl) return migrate(bounded(pool, MIGRATION_DEADLINE_MS, 'migration deadline', MIGRATION_DEADLINE_MS), sqlDir)
  return migrateDirect(directUrl, sqlDir, log, retryMaxMs, signal)
}


async function migrateDirect (directUrl: string, sqlDir: string, log: Logger, retryMaxMs: number, signal: AbortSignal): Promise<MigrationResult> {
  const direct = await connect({ url: directUrl, log, retryMaxMs, signal, max: 1, variable: 'DATABASE_DIRECT_URL' })
  try {
    return await migrate(bounded(direct, MIGRATION_DEADLINE_MS, 'migration deadline', MIGRATION_DEADLINE_MS), sqlDir)
  } finally {
    await direct.end({ timeout: 2 }).catch(() => {})
  }
}

/**
 * After the last stream: the ledger gets five seconds to write what is queued (the journal keeps
 * the rest for the next start), then every pool and timer boot made is released.
 */
export async function releaseServices (s: Services, journal: Journal, log: Logger): Promise<void> {
  s.keyPoller?.stop() // again: a boot that finished during the grace period started it
  s.spend?.close()
  s.reconciler?.stop() // unreconciled generations stay pending in the journal for the next boot
  const drained = s.ledger ? await s.ledger.drain(5_000) : true
  s.ledger?.close()
  journal.close()
  log.info({ drained, backlog: journal.backlog }, drained ? 'ledger flushed' : 'ledger not fully flushed: the journal keeps the rest for the next start')
  await s.keys?.close() // when keys were last used: written before the pools close
  s.maintenance?.stop()
  // The pools are ended (at most 2 s, then their connections are cut) before the compaction in
  // flight is awaited: a query to a Postgres that does not answer ends only when its connection does.
  const compacting = s.compactor?.stop()
  await s.readSql?.end({ timeout: 2 }).catch(() => {})
  if (s.admissionSql !== s.sql) await s.admissionSql?.end({ timeout: 2 }).catch(() => {})
  if (s.exportSql !== s.sql) await s.exportSql?.end({ timeout: 2 }).catch(() => {})
  await s.sql?.end({ timeout: 2 }).catch(() => {})
  await compacting
  await s.embedded?.stop().catch(() => {})
}
