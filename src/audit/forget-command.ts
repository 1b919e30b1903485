import { ConfigError, loadDatabaseConfig } from '../config/config.js'
import { connect, type Sql } from '../db/connect.js'
import { startEmbedded, type EmbeddedDb } from '../db/embedded.js'
import { createLogger } from '../lib/log.js'
import { forgetUser } from './forget.js'

// `usage-proxy forget --user ID`: what DELETE /admin/v1/users/{userId} does, from the command
// line (audit actor `cli`). Exit 0 when forgotten (or forgotten before), 1 when nothing names the
// user, 2 on a usage or configuration error. The sidecar may keep running when DATABASE_URL is set.

const USAGE = 'usage: usage-proxy forget --user ID'

export async function runForget (args: string[], env: Record<string, string | undefined>,
  out: (s: string) => void = (s) => process.stdout.write(s), err: (s: string) => void = (s) => process.stderr.write(s)): Promise<number> {
  let user: string | undefined
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (a === '--user' && i + 1 < args.length) user = args[++i]
    else if (a.startsWith('--user=')) user = a.slice('--user='.length)
    else { err(`usage-proxy: forget: unexpected argument ${JSON.stringify(a)}\n${USAGE}\n`); return 2 }
  }
  if (user === undefined || user === '' || user.includes('\u0000')) { err(`usage-proxy: forget: --user ID is required\n${USAGE}\n`); return 2 }
  let db
  try { db = loadDatabaseConfig(env) } catch (e) {
    if (e instanceof ConfigError) { err(`usage-proxy: ${e.message}\n`); return 2 }
    throw e
  }
  if (db.organizationId === undefined) { err('usage-proxy: forget: OPENROUTER_EXTERNAL_USER must name the organization\n'); return 2 }
  const log = createLogger('warn')
  let embedded: EmbeddedDb | null = null
  let sql: Sql | null = null
  try {
    // Without DATABASE_URL the embedded database under DATA_DIR is opened: stop the sidecar first.
    const url = db.databaseUrl ?? (embedded = await startEmbedded(db.dataDir, 0, log)).url
    sql = await connect({ url, log, retryMaxMs: 1000, max: 1 })
    const [fn] = await sql`select to_regprocedure('forget_user(text, text)') is not null as ok`
    if (fn.ok !== true) { err('usage-proxy: forget: this database has not been migrated to this version yet: start the sidecar once, then run forget\n'); return 2 }
    const done = await forgetUser(sql, db.organizationId, user, 'cli')
    if (done === null) { err(`usage-proxy: forget: no usage, mapping or budget names this user in ${db.organizationId}\n`); return 1 }
    out(done.alreadyForgotten
      ? `forget: already forgotten as ${done.pseudonym}; nothing newer names the user\n`
      : `forget: the user is now ${done.pseudonym} in every row, rollup, mapping, budget and audit line; name, email, chat and message ids erased\n`)
    return 0
  } finally {
    await sql?.end({ timeout: 2 }).catch(() => {})
    await embedded?.stop().catch(() => {})
  }
}
