import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { ConfigError, loadDatabaseConfig } from '../config/config.js'
import { createLogger } from '../lib/log.js'
import { StartupError } from '../lib/startup-error.js'
import { connect, redactUrl, type Sql } from './connect.js'
import { CopyRefused, copyLedger } from './copy-ledger.js'
import { startEmbedded, type EmbeddedDb } from './embedded.js'
import { migrate } from './migrate.js'

// `usage-proxy export-db --to postgres://…`: carries the embedded ledger (PGlite under DATA_DIR)
// to a PostgreSQL server, for the day a trial becomes a deployment. The target is migrated to
// this version's schema first, so any empty database will do. DATA_DIR's journal is not touched:
// started with DATABASE_URL and the same DATA_DIR, the sidecar replays it into the new database
// (idempotently: rows already copied are skipped).

const USAGE = 'usage: usage-proxy export-db --to postgres://user:password@host:5432/db'

export async function runExportDb (args: string[], env: Record<string, string | undefined>, sqlDir: string,
  out: (s: string) => void = (s) => process.stdout.write(s), err: (s: string) => void = (s) => process.stderr.write(s)): Promise<number> {
  let to: string | undefined
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (a === '--to' && i + 1 < args.length) to = args[++i]
    else if (a.startsWith('--to=')) to = a.slice('--to='.length)
    else { err(`usage-proxy: export-db: unexpected argument ${JSON.stringify(a)}\n${USAGE}\n`); return 2 }
  }
  if (to === undefined || !/^postgres(ql)?:\/\//.test(to)) { err(`usage-proxy: export-db: --to needs a postgres:// URL\n${USAGE}\n`); return 2 }
  let dataDir: string
  try { dataDir = loadDatabaseConfig({ ...env, DATABASE_URL: undefined }).dataDir } catch (e) {
    if (e instanceof ConfigError) { err(`usage-proxy: ${e.message}\n`); return 2 }
    throw e
  }
  if (!existsSync(join(dataDir, 'pglite', 'PG_VERSION'))) {
    err(`usage-proxy: export-db: no embedded database under ${join(dataDir, 'pglite')}: set DATA_DIR to the directory the sidecar ran with\n`)
    return 2
  }
  const log = createLogger('warn')
  let embedded: EmbeddedDb | null = null
  let source: Sql | null = null
  let target: Sql | null = null
  try {
    // Opened here, in this process: the sidecar that uses it must be stopped first.
    embedded = await startEmbedded(dataDir, 0, log)
    source = await connect({ url: embedded.url, log, retryMaxMs: 1000, max: 1 })
    target = await connect({ url: to, variable: '--to', log, retryMaxMs: 1000, max: 1, signal: AbortSignal.timeout(15_000) })
    await migrate(source, sqlDir)
    await migrate(target, sqlDir)
    const r = await copyLedger(source, target)
    for (const t of r.tables) out(`${t.table}: ${t.rows} rows\n`)
    out(`export-db: the embedded ledger is in ${redactUrl(to)}: ${r.tables.find((t) => t.table === 'usage_events')?.rows ?? 0} usage rows, ` +
      `cost ${r.costUsd} USD, billed ${r.billedCostUsd} USD, ${r.partitions.length} monthly partitions.\n` +
      'Next: set DATABASE_URL to that URL and start the sidecar with the same DATA_DIR; its journal (records not yet committed) is replayed there.\n')
    return 0
  } catch (e) {
    if (e instanceof CopyRefused || e instanceof StartupError) { err(`usage-proxy: export-db: ${e.message}\n`); return 2 }
    err(`usage-proxy: export-db: the copy failed and no row was written to the target: ${(e as Error).message}\n`)
    return 1
  } finally {
    await source?.end({ timeout: 2 }).catch(() => {})
    await target?.end({ timeout: 2 }).catch(() => {})
    await embedded?.stop().catch(() => {})
  }
}
