import { ConfigError, loadConfig, loadDatabaseConfig } from '../config/config.js'
import { connect, type Sql } from '../db/connect.js'
import { startEmbedded, type EmbeddedDb } from '../db/embedded.js'
import { createLogger } from '../lib/log.js'
import { configuredSinks } from './configured.js'
import { dedupeWarnings, replay } from './replay.js'
import { exportStatus } from './status.js'

// `usage-proxy export status [--json]` and `usage-proxy export replay --sink NAME --from DATE
// [--dry-run]`. Exit 0 on success, 1 when the database cannot be read or a replay leaves rows
// refused, 2 on a usage or configuration error.

const USAGE = 'usage: usage-proxy export status [--json] | usage-proxy export replay --sink NAME --from YYYY-MM-DD[THH:MM:SSZ] [--dry-run]\n'

export async function runExport (args: string[], env: Record<string, string | undefined>,
  out: (s: string) => void = (s) => process.stdout.write(s), err: (s: string) => void = (s) => process.stderr.write(s)): Promise<number> {
  const [sub, ...rest] = args
  const flags = new Map<string, string | true>()
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a)
    if (!m) { err(`usage-proxy: export: unexpected argument ${JSON.stringify(a)}\n${USAGE}`); return 2 }
    if (m[2] !== undefined) flags.set(m[1], m[2])
    else if (m[1] === 'sink' || m[1] === 'from') {
      if (i + 1 >= rest.length) { err(`usage-proxy: export: --${m[1]} needs a value\n${USAGE}`); return 2 }
      flags.set(m[1], rest[++i])
    } else flags.set(m[1], true)
  }
  const allowed = sub === 'status' ? ['json'] : sub === 'replay' ? ['sink', 'from', 'dry-run'] : null
  if (allowed === null) { err(`usage-proxy: export: unknown subcommand ${JSON.stringify(sub ?? '')}\n${USAGE}`); return 2 }
  for (const k of flags.keys()) if (!allowed.includes(k)) { err(`usage-proxy: export ${sub}: unknown option --${k}\n${USAGE}`); return 2 }

  let db
  try { db = loadDatabaseConfig(env) } catch (e) {
    if (e instanceof ConfigError) { err(`usage-proxy: ${e.message}\n`); return 2 }
    throw e
  }
  if (db.organizationId === undefined) { err('usage-proxy: export: OPENROUTER_EXTERNAL_USER is required: it names the organization whose export this is\n'); return 2 }
  const org = db.organizationId
  const log = createLogger('warn')
  let embedded: EmbeddedDb | null = null
  let sql: Sql | null = null
  const open = async (): Promise<Sql> => {
    const url = db.databaseUrl ?? (embedded = await startEmbedded(db.dataDir, 0, log)).url
    sql = await connect({ url, log, retryMaxMs: 1000, max: 2 })
    return sql
  }
  try {
    if (sub === 'status') {
      const status = await exportStatus(await open(), org)
      if (flags.has('json')) { out(JSON.stringify(status, null, 2) + '\n') } else if (status.length === 0) {
        out('export: no sink has run yet (set STRIPE_SECRET_KEY or CLOUDEVENTS_URL to turn one on)\n')
      } else {
        for (const s of status) {
          out(`${s.sink}: ${s.rowsSent} sent, ${s.rowsSetAside} set aside, ${s.pending}${s.pendingCapped ? '+' : ''} waiting` +
            `${s.pending > 0 ? ` (oldest ${s.lagSeconds} s)` : ''}; lease ${s.holder === null ? 'free' : `held by ${s.holder} until ${s.leaseExpiresAt}`}` +
            `; last sent ${s.lastSentAt ?? 'never'}\n`)
          if (s.lastError !== null) out(`  last error (${s.lastErrorAt}): ${s.lastError}\n`)
          for (const a of s.setAside) out(`  set aside ${a.eventId} (created ${a.createdAt}): ${a.reason}\n`)
        }
      }
      return 0
    }
    const sinkName = flags.get('sink')
    const from = flags.get('from')
    if (typeof sinkName !== 'string' || typeof from !== 'string') { err(`usage-proxy: export replay needs --sink and --from\n${USAGE}`); return 2 }
    if (!/^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(from) || Number.isNaN(Date.parse(from))) {
      err(`usage-proxy: export replay: --from must be a date such as 2026-11-01 or 2026-11-01T00:00:00Z (UTC when no offset is given), got ${JSON.stringify(from)}\n`); return 2
    }
    const fromUtc = /[T ]\d{2}:\d{2}.*(Z|[+-]\d{2}:?\d{2})$/.test(from) ? from : `${from.replace(' ', 'T')}${from.length === 10 ? 'T00:00:00' : ''}Z`
    let config
    try { config = loadConfig(env) } catch (e) {
      if (e instanceof ConfigError) { err(`usage-proxy: ${e.message}\n`); return 2 }
      throw e
    }
    const s = await open()
    const sink = configuredSinks(config.export, s, org, 'replay').find((k) => k.name === sinkName)
    if (sink === undefined) { err(`usage-proxy: export replay: sink ${JSON.stringify(sinkName)} is not configured here (configured: ${configuredSinks(config.export, s, org).map((k) => k.name).join(', ') || 'none'})\n`); return 2 }
    for (const w of await dedupeWarnings(s, org, sink.name, fromUtc)) err(`usage-proxy: export replay: warning: ${w}\n`)
    if (flags.has('dry-run')) { out('export replay: dry run, nothing sent\n'); return 0 }
    const r = await replay(s, org, sink, fromUtc, { maxAttempts: 8 })
    out(`export replay ${sink.name} from ${fromUtc}: ${r.rows} rows resent, ${r.sent} taken, ${r.rejected} refused` +
      `${r.recoveredFromSetAside > 0 ? `, ${r.recoveredFromSetAside} of them no longer set aside` : ''}\n`)
    return r.rejected > 0 ? 1 : 0
  } catch (e) {
    err(`usage-proxy: export: ${(e as Error).message}\n`)
    return 1
  } finally {
    await (sql as Sql | null)?.end({ timeout: 2 }).catch(() => {})
    await (embedded as EmbeddedDb | null)?.stop().catch(() => {})
  }
}
