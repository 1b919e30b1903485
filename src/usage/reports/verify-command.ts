import { ConfigError, loadDatabaseConfig } from '../../config/config.js'
import { connect, type Sql } from '../../db/connect.js'
import { startEmbedded, type EmbeddedDb } from '../../db/embedded.js'
import { createLogger } from '../../lib/log.js'
import { formatDifference, formatEstimateOnly, monthRange, verifyRollups } from './verify.js'

// `usage-proxy verify [--month YYYY-MM]`: exit 0 when every rollup matches the raw rows, 1 when
// any differs (each difference printed), 2 on a usage or configuration error.

export async function runVerify (args: string[], env: Record<string, string | undefined>,
  out: (s: string) => void = (s) => process.stdout.write(s), err: (s: string) => void = (s) => process.stderr.write(s)): Promise<number> {
  let month: string | undefined
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (a === '--month' && i + 1 < args.length) month = args[++i]
    else if (a.startsWith('--month=')) month = a.slice('--month='.length)
    else { err(`usage-proxy: verify: unexpected argument ${JSON.stringify(a)}\nusage: usage-proxy verify [--month YYYY-MM]\n`); return 2 }
  }
  try {
    if (month !== undefined) monthRange(month)
  } catch (e) { err(`usage-proxy: verify: ${(e as Error).message}\n`); return 2 }
  let db
  try { db = loadDatabaseConfig(env) } catch (e) {
    if (e instanceof ConfigError) { err(`usage-proxy: ${e.message}\n`); return 2 }
    throw e
  }
  const log = createLogger('warn')
  let embedded: EmbeddedDb | null = null
  let sql: Sql | null = null
  try {
    // Without DATABASE_URL the embedded database under DATA_DIR is opened: stop the sidecar first.
    const url = db.databaseUrl ?? (embedded = await startEmbedded(db.dataDir, 0, log)).url
    sql = await connect({ url, log, retryMaxMs: 1000, max: 1 })
    const r = await verifyRollups(sql, { month })
    const scope = month ?? (r.from ? `${r.from} onwards (raw rows retained)` : 'everything')
    for (const d of r.differences) out(formatDifference(d) + '\n')
    // Not a difference: requests a crash cut off before their generation was named. Listed so an
    // operator can match them against OpenRouter's activity; they never change the exit code.
    for (const row of r.interrupted.rows) out(formatEstimateOnly(row) + '\n')
    if (r.interrupted.count > 0) {
      out(`verify ${month ?? 'everything'}: ${r.interrupted.count} interrupted request(s) with no generation id: cost unknown, ` +
        `budgets count them at their estimates ($${r.interrupted.estimateTotalUsd} in all)` +
        (r.interrupted.count > r.interrupted.rows.length ? `; the first ${r.interrupted.rows.length} listed` : '') + '\n')
    }
    if (r.differences.length === 0) {
      out(`verify ${scope}: ${r.rollupRows} rollup rows match ${r.rawRows} raw rows` +
        (r.monthlyRows === null ? '' : `; ${r.monthlyRows} monthly and ${r.orgDailyRows} per-organization day rows match their days`) +
        ((r.groupDailyRows ?? 0) + (r.groupMonthlyRows ?? 0) === 0 ? '' : `; ${r.groupDailyRows} group day and ${r.groupMonthlyRows} group month rows match`) + '\n')
      return 0
    }
    out(`verify ${scope}: ${r.differences.length} rollup row(s) differ from the raw rows\n`)
    return 1
  } finally {
    await sql?.end({ timeout: 2 }).catch(() => {})
    await embedded?.stop().catch(() => {})
  }
}
