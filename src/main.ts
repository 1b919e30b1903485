import { fileURLToPath } from 'node:url'
import { dirname, join, resolve } from 'node:path'
import type { AddressInfo } from 'node:net'
import type { Server, ServerResponse } from 'node:http'
import { ConfigError, loadConfig, type Config } from './config/config.js'
import { processEnvironment } from './config/env-file.js'
import { createAdminPlane } from './admin/index.js'
import { connect, redactUrl, type Sql } from './db/connect.js'
import { installCrashGuard } from './crash-guard.js'
import { startEmbedded, type EmbeddedDb } from './db/embedded.js'
import { migrate } from './db/migrate.js'
import { startPartitionMaintenance, type PartitionMaintainer } from './db/partitions.js'
import { upsertOrganization } from './db/organizations.js'
import { UserDirectory } from './identity/directory.js'
import { identityHeaders, ignoredHeadersWarning } from './identity/identify.js'
import { createLogger, scrub, type Logger } from './log.js'
import { createPassthrough } from './proxy/passthrough.js'
import { createSelfService } from './proxy/self-service.js'
import { createProxyServer } from './proxy/server.js'
import { budgetForUser } from './budgets/status-for.js'
import { myUsageSummary } from './usage/my-usage.js'
import { createUpstream } from './proxy/upstream.js'
import { Journal } from './usage/journal.js'
import { Ledger } from './usage/ledger.js'
import { Reconciler } from './usage/reconcile.js'
import { startRollupCompaction, type RollupCompactor } from './usage/rollups.js'
import type { UsageRecord } from './usage/record.js'
import { createMetrics } from './metrics.js'
import { createAccessLog } from './proxy/access-log.js'
import { startKeyPoller, type KeyPoller } from './openrouter-key.js'
import { StartupError, listenError } from './startup-error.js'
import { createServer } from 'node:http'
import { startLimits, type SpendControls } from './budgets/boot.js'
import { registerBudgetMetrics } from './budgets/metrics.js'

const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'sql')

export interface Sidecar {
  config: Config
  server: Server
  port: number
  /** Resolves when boot finished and /readyz answers 200. */
  ready: Promise<void>
  ledger: () => Ledger | null
  log: Logger
  /** Graceful stop: refuse new requests, let streams finish, flush the ledger. */
  stop: (reason?: string) => Promise<void>
  isStopping: () => boolean
}

/**
 * The boot sequence. The listener opens first so /healthz and /readyz answer while Postgres is
 * still being reached; the data plane answers 503 until every step below is done.
 */
export async function start (env: Record<string, string | undefined>, log?: Logger): Promise<Sidecar> {
  // 1. configuration: every problem at once, or nothing starts
  const config = loadConfig(env)
  log ??= createLogger(config.logLevel)
  const secrets = [config.openrouter.apiKey, config.server.proxyApiKey, config.identity.jwtSecret, config.metrics.apiKey]

  let ready = false
  let stopping: Promise<void> | null = null
  let inFlight = 0
  let idle: (() => void) | null = null
  const upstream = createUpstream({ baseUrl: config.openrouter.baseUrl, apiKey: config.openrouter.apiKey, ...config.upstream })
  const idHeaders = identityHeaders(config.identity)
  // The task and message-id headers stay with the sidecar too, whatever they are named.
  idHeaders.add(config.kinds.taskHeader).add(config.kinds.messageIdHeader)
  const passthrough = createPassthrough(config.openrouter.baseUrl, config.openrouter.apiKey, config.openrouter.appUrl, config.openrouter.appTitle, idHeaders, log)
  if (!config.server.proxyApiKey && !['127.0.0.1', '::1', 'localhost'].includes(config.server.host)) {
    log.warn({ host: config.server.host }, 'PROXY_API_KEY is not set: anyone who can reach this port can spend the organization\'s OpenRouter key')
  }
  const journal = new Journal(join(resolve(config.ledger.dataDir), 'journal'), log)

  // Filled in by boot; the server only reaches them once `ready` is true.
  let sql: Sql | null = null
  let readSql: Sql | null = null
  let maintenance: PartitionMaintainer | null = null
  let compactor: RollupCompactor | null = null
  let embedded: EmbeddedDb | null = null
  let ledger: Ledger | null = null
  let reconciler: Reconciler | null = null
  let directory: UserDirectory | null = null
  let spend: SpendControls | null = null

  let keyPoller: KeyPoller | null = null
  const metrics = createMetrics(() => ledger && reconciler && {
    ledgerDepth: () => ledger!.depth,
    journalBacklog: () => journal.backlog,
    reconcileActive: () => reconciler!.active,
    reconciled: () => reconciler!.reconciled,
    reconcileGaveUp: () => reconciler!.gaveUp,
    ledgerWritten: () => ledger!.written,
    ledgerRejected: () => ledger!.rejected,
  }, {
    apiKey: config.metrics.apiKey,
    maxModels: config.metrics.maxModels,
    postgresUp: () => postgresAnswers(sql),
    keyBalance: () => keyPoller?.latest() ?? null,
    organizationId: config.organization.id,
  }, (registry) => registerBudgetMetrics(registry, () => sql && { sql, org: config.organization.id }))
  // The usage page's bar and "My usage" read the budget that governs a user.
  const budgetFor = budgetForUser(() => sql!, config.organization.id, () => spend?.limits.mayHaveBudgets ?? false)
  const selfService = config.selfService.model === null ? undefined : createSelfService({
    model: config.selfService.model, name: config.selfService.name, modelsUrl: `${config.openrouter.baseUrl}/models`, log,
    headers: { apiKey: config.openrouter.apiKey, appUrl: config.openrouter.appUrl, appTitle: config.openrouter.appTitle, identityHeaders: idHeaders },
    summary: (who, externalUserId) => myUsageSummary(sql!, { organizationId: config.organization.id, userId: who.userId, externalUserId, budgetFor }),
  })
  const access = createAccessLog({ log, enabled: config.accessLog, count: metrics.response })
  const meter = {
    selfService,
    upstream,
    apiKey: config.openrouter.apiKey,
    appUrl: config.openrouter.appUrl,
    appTitle: config.openrouter.appTitle,
    organizationId: config.organization.id,
    markupPercent: config.organization.markupPercent,
    maxBodyBytes: config.server.maxBodyBytes,
    identity: { ...config.identity, onIgnoredHeaders: config.identity.jwtSecret ? ignoredHeadersWarning(log, config.identity) : undefined },
    identityHeaders: idHeaders,
    get directory () { return directory! },
    get ledger () { return ledger! },
    get reconciler () { return reconciler! },
    log,
    track (delta: 1 | -1) { inFlight += delta; if (inFlight === 0 && idle) idle() },
    observe (rec: UsageRecord, res: ServerResponse) { metrics.observe(rec); access.record(res, rec) },
    stopping: () => stopping !== null,
    kinds: { ...config.kinds, appHeaders: idHeaders },
    get limits () { return spend?.limits },
  }
  // METRICS_PORT: /metrics only on its own listener (loopback by default), not on the data plane.
  const metricsServer = config.metrics.port === undefined ? null : createServer((req, res) => {
    if ((req.url ?? '/').split('?')[0] === '/metrics') return metrics.handler(req, res)
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: this port serves /metrics\n')
  })
  const server = createProxyServer({ meter, passthrough, proxyApiKey: config.server.proxyApiKey, isReady: () => ready, metrics: metricsServer ? undefined : metrics.handler,
    onExchange: access.begin,
    clientTimeouts: { headersMs: config.server.headersTimeoutMs, requestMs: config.server.requestTimeoutMs }, onPassthrough: metrics.passthrough,
    connections: { max: config.server.maxConnections, perIp: config.server.maxConnectionsPerIp },
    admin: createAdminPlane({ config, sql: () => sql!, readSql: () => readSql ?? sql!, log, budgetFor, budgetsChanged: () => { void spend?.limits.refresh() } }) ?? undefined, models: selfService?.listModels })
  try {
    await listen(server, 'PORT', config.server.host, config.server.port)
    if (metricsServer) await listen(metricsServer, 'METRICS_PORT', config.metrics.host, config.metrics.port!)
  } catch (err) {
    server.close()
    passthrough.close()
    journal.close()
    await upstream.close().catch(() => {})
    throw err
  }
  const port = (server.address() as AddressInfo).port
  if (metricsServer) log.info({ port: (metricsServer.address() as AddressInfo).port, host: config.metrics.host }, 'metrics listening')
  if (!config.server.proxyApiKey && ['127.0.0.1', '::1', 'localhost'].includes(config.server.host)) {
    log.warn({ host: config.server.host }, 'PROXY_API_KEY is not set: listening on loopback only; set PROXY_API_KEY to serve other hosts')
  }
  log.info({ port, host: config.server.host, upstream: config.openrouter.baseUrl, organization: config.organization.id }, 'listening; not ready until the database is')

  const abort = new AbortController()
  const ready$ = (async () => {
    // 2. the database: DATABASE_URL, or the embedded one under DATA_DIR
    let url = config.databaseUrl
    if (!url) {
      embedded = await startEmbedded(config.ledger.dataDir, config.db.embeddedPort, log!)
      url = embedded.url
      log!.info({ psql: embedded.psql }, 'no DATABASE_URL: using the embedded database; query it with psql')
      log!.warn('the embedded database is for trying usage-proxy out: one process, a password-less superuser on loopback, several hundred MB of memory. ' +
        'In production set DATABASE_URL to a PostgreSQL server you back up (compose.example.yml runs one)')
    }
    sql = await connect({ url, log: log!, retryMaxMs: config.db.connectRetryMaxMs, signal: abort.signal, max: embedded ? 1 : 5 }) // the ledger's 3 batches + 2 for the request path
    // 3. schema, under an advisory lock so sidecars booting together are safe
    const migrated = await migrate(sql, SQL_DIR)
    log!.info({ applied: migrated.applied, alreadyApplied: migrated.skipped.length, database: redactUrl(url) }, 'schema ready')
    // 3b. monthly partitions ahead and retention, by one replica a day (src/db/partitions.ts)
    maintenance = await startPartitionMaintenance(sql, log!, { retentionMonths: config.retentionMonths })
    compactor = startRollupCompaction(sql, log!)
    // Reports read from the replica once it answers; the primary serves them until then, so a
    // replica that is down never holds up boot or the data plane.
    if (config.databaseReadUrl) {
      void connect({ url: config.databaseReadUrl, log: log!, retryMaxMs: config.db.connectRetryMaxMs, signal: abort.signal, max: 4 })
        .then((r) => { if (stopping) void r.end({ timeout: 0 }); else { readSql = r; log!.info({ database: redactUrl(config.databaseReadUrl!) }, 'read replica ready for reports') } }, () => {})
    }
    // 4. the organization row
    const created = await upsertOrganization(sql, config.organization, config.openrouter.apiKey)
    log!.info({ organization: config.organization.id, created, markupPercent: config.organization.markupPercent }, 'organization ready')
    // 5. replay what an earlier process journaled but never committed
    ledger = new Ledger(sql, journal, log!, { ...config.ledger, rejectedPath: join(resolve(config.ledger.dataDir), 'rejected.jsonl') })
    reconciler = new Reconciler(upstream.fetchGeneration, (r) => ledger!.record(r), log!, { maxWaitMs: config.ledger.reconcileMaxWaitMs })
    directory = new UserDirectory(config.organization.id)
    spend = await startLimits({ sql, config, upstream, log: log!, record: (r) => ledger!.record(r) })
    const replay = journal.replay()
    for (const r of replay.finals) ledger.record(r, true)
    // A pending line is the request as far as it got: 'interrupted' unless it had ended.
    for (const r of replay.pendings) reconciler.enqueue(r)
    if (replay.segments > 0) log!.info({ records: replay.finals.length, toReconcile: replay.pendings.length, tornLines: replay.tornLines }, 'journal replayed')
    // 6. open for traffic
    ready = true
    keyPoller = startKeyPoller(upstream.fetchKey, log!)
    log!.info({ port }, 'ready')
  })()
  ready$.catch((err) => {
    if (stopping) return
    log!.fatal({ err: scrub(err instanceof Error ? `${err.name}: ${err.message}` : String(err), secrets) }, 'boot failed')
  })

  const stop = (reason = 'stop'): Promise<void> => {
    stopping ??= (async () => {
      log!.info({ reason, inFlight }, 'shutting down: no new requests, waiting for streams in flight')
      ready = false
      abort.abort()
      server.close()
      server.closeIdleConnections()
      keyPoller?.stop()
      metricsServer?.close()
      metricsServer?.closeAllConnections()
      if (inFlight > 0) {
        await Promise.race([
          new Promise<void>((r) => { idle = r }),
          new Promise<void>((r) => setTimeout(r, config.server.shutdownGraceMs).unref()),
        ])
      }
      server.closeAllConnections()
      spend?.close()
      reconciler?.stop() // unreconciled generations stay pending in the journal for the next boot
      const drained = ledger ? await ledger.drain(5_000) : true
      ledger?.close()
      journal.close()
      log!.info({ drained, backlog: journal.backlog }, drained ? 'ledger flushed' : 'ledger not fully flushed: the journal keeps the rest for the next start')
      maintenance?.stop()
      await compactor?.stop()
      await readSql?.end({ timeout: 2 }).catch(() => {})
      await sql?.end({ timeout: 2 }).catch(() => {})
      await embedded?.stop().catch(() => {})
      passthrough.close()
      await upstream.close().catch(() => {})
    })()
    return stopping
  }

  return { config, server, port, ready: ready$, ledger: () => ledger, log, stop, isStopping: () => stopping !== null }
}

/** Runs the sidecar as a process: exits 2 on a configuration error, stops gracefully on SIGTERM/SIGINT. */
export async function main (): Promise<void> {
  let sidecar: Sidecar
  try {
    sidecar = await start(processEnvironment())
  } catch (err) {
    if (err instanceof StartupError) {
      process.stderr.write(`usage-proxy: ${err.message}\n`)
      process.exit(1)
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`usage-proxy: ${err.message}\n` +
        'Set these in the environment or in ./.env; `npx usage-proxy gen-env "Your Org" > .env` writes one to start from.\n')
      process.exit(2)
    }
    throw err
  }
  installCrashGuard(sidecar.log)
  // A boot cut short by SIGTERM is a stop, not a failure.
  sidecar.ready.catch((err) => {
    if (sidecar.isStopping()) return
    if (err instanceof StartupError) process.stderr.write(`usage-proxy: ${err.message}\n`)
    process.exit(1)
  })
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => { void sidecar.stop(sig).then(() => process.exit(0)) })
  }
}

function listen (server: Server, variable: string, host: string, port: number): Promise<void> {
  return new Promise<void>((ok, fail) => {
    const failed = (err: Error): void => fail(listenError(err, variable, host, port))
    server.once('error', failed)
    server.listen(port, host, () => { server.off('error', failed); ok() })
  })
}

/** For the postgres_up gauge: a query answered within two seconds. */
async function postgresAnswers (sql: Sql | null): Promise<boolean> {
  if (!sql) return false
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), 2000) })
  try {
    return await Promise.race([sql`select 1`.then(() => true, () => false), late])
  } finally { clearTimeout(timer) }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) void main()
