import { fileURLToPath } from 'node:url'
import { dirname, join, resolve } from 'node:path'
import type { AddressInfo } from 'node:net'
import type { Server, ServerResponse } from 'node:http'
import { ConfigError, loadConfig, type Config } from './config/config.js'
import { processEnvironment } from './config/env-file.js'
import { createAdminPlane } from './admin/index.js'
import { bootServices, noServices, releaseServices, type Booted, type Services } from './boot.js'
import { installCrashGuard } from './lib/crash-guard.js'
import { HEADROOM_MB, keepGcHeadroom } from './lib/gc-headroom.js'
import { identityHeaders, ignoredHeadersWarning, type IdentityOptions } from './identity/identify.js'
import { createLogger, scrub, type Logger } from './lib/log.js'
import { createPassthrough } from './proxy/passthrough.js'
import { modelsList } from './proxy/models-list.js'
import { createSelfService } from './proxy/self-service.js'
import { createProxyServer, type DataPlane } from './proxy/server.js'
import type { UpstreamHeaderPolicy } from './proxy/headers.js'
import type { MeterContext } from './proxy/metered.js'
import { BodyMemory } from './proxy/body/body-memory.js'
import { budgetForUser, budgetsForUsers } from './budgets/status-for.js'
import { myUsageSummary } from './usage/reports/my-usage.js'
import { MY_USAGE_CACHE, cachedSummary } from './usage/reports/my-usage-cache.js'
import { createUpstream } from './proxy/upstream.js'
import { Journal } from './usage/ledger/journal.js'
import type { Ledger } from './usage/ledger/ledger.js'
import type { Limits } from './budgets/limits.js'
import type { UsageRecord } from './usage/ledger/record.js'
import { createMetrics, type MetricsSources } from './ops/metrics.js'
import { createAccessLog } from './proxy/access-log.js'
import { StartupError, listenError } from './lib/startup-error.js'
import { createServer } from 'node:http'
import { registerBudgetMetrics } from './ops/budget-metrics.js'
import { startDbReadings } from './ops/db-readings.js'
import { logStartupBanner } from './ops/startup-banner.js'
import { configuredSinks } from './export/configured.js'
import { startExporter, type Exporter } from './export/exporter.js'
import { registerExportMetrics } from './export/metrics.js'
import { seedStripeCustomer } from './export/seed.js'

const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'sql')

export interface Sidecar {
  config: Config
  server: Server
  port: number
  /** Resolves when boot finished and /readyz answers 200. */
  ready: Promise<void>
  ledger: () => Ledger | null
  /** The spend controls, once boot finished: what they currently believe of the budgets. */
  limits: () => Pick<Limits, 'mayHaveBudgets'> | null
  log: Logger
  /** Graceful stop: refuse new requests, let streams finish, flush the ledger. */
  stop: (reason?: string) => Promise<void>
  isStopping: () => boolean
}

/**
 * The boot sequence. The listener opens first so /healthz and /readyz answer while Postgres is
 * still being reached; the data plane is built from what boot opened, and until it exists every
 * route that needs it answers 503.
 */
/** What an embedding program (a test) may add to what the environment configures. */
export interface StartOptions {
  /** Where a request's groups come from. */
  groupsOf?: IdentityOptions['groupsOf']
}

export async function start (env: Record<string, string | undefined>, log?: Logger, options: StartOptions = {}): Promise<Sidecar> {
  // 1. configuration: every problem at once, or nothing starts
  const config = loadConfig(env)
  log ??= createLogger(config.logLevel)
  const secrets = [config.openrouter.apiKey, config.server.proxyApiKey, config.identity.jwtSecret, config.metrics.apiKey, config.export.stripe?.secretKey, config.export.cloudEvents?.secret, ...Object.values(config.export.otel?.headers ?? {})]
  const journal = new Journal(join(resolve(config.ledger.dataDir), 'journal'), log)
  // Whatever way the process exits (process.exit after a fatal error included), this turn's lines go first.
  const flushAtExit = (): void => { journal.flush() }
  process.once('exit', flushAtExit)

  let plane: DataPlane | null = null // what the server answers with once boot is done; null again at stop
  let stopping: Promise<void> | null = null
  const s = noServices() // what boot has opened so far: /metrics reads it, stop releases it
  const inFlight = inFlightCounter()
  let exporter: Exporter | null = null // the export to billing receivers, once boot is done
  const front = frontDoor(config, log, s, journal, () => plane, () => exporter)
  try {
    await listen(front.server, 'PORT', config.server.host, config.server.port)
    if (front.metricsServer) await listen(front.metricsServer, 'METRICS_PORT', config.metrics.host, config.metrics.port!)
  } catch (err) {
    front.server.close()
    front.passthrough.close()
    journal.close()
    process.removeListener('exit', flushAtExit)
    await front.upstream.close().catch(() => {})
    throw err
  }
  const port = (front.server.address() as AddressInfo).port
  if (front.metricsServer) log.info({ port: (front.metricsServer.address() as AddressInfo).port, host: config.metrics.host }, 'metrics listening')
  if (!config.server.proxyApiKey && LOOPBACK.includes(config.server.host)) {
    log.warn({ host: config.server.host }, 'PROXY_API_KEY is not set: listening on loopback only; set PROXY_API_KEY to serve other hosts')
  }
  log.info({ port, host: config.server.host, upstream: config.openrouter.baseUrl, organization: config.organization.id }, 'listening; not ready until the database is')

  const abort = new AbortController()
  const ready$ = (async () => {
    // 2-5. database, schema, organization, journal replay (src/boot.ts)
    const booted = await bootServices(s, { config, log: log!, journal, upstream: front.upstream, sqlDir: SQL_DIR, signal: abort.signal, isStopping: () => stopping !== null })
    // 6. open for traffic, with /metrics's first reading of Postgres taken
    void front.readings.refresh()
    plane = dataPlane(config, log!, booted, front, { isStopping: () => stopping !== null, track: inFlight.track }, options, () => exporter)
    log!.info({ port }, 'ready')
    // 7. the export: reads committed rows in the background, never on a request's path
    const sinks = configuredSinks(config.export, booted.exportSql, config.organization.id)
    if (config.export.stripe?.customerId) await seedStripeCustomer(booted.sql, config.organization.id, config.export.stripe.customerId)
    if (sinks.length > 0 && stopping === null) {
      exporter = startExporter(sinks, {
        sql: booted.exportSql, organizationId: config.organization.id, log: log!,
        leaseMs: config.export.leaseMs, pollMs: config.export.pollMs, backoff: { baseMs: 250, maxMs: config.export.retryMaxMs },
      })
      log!.info({ sinks: sinks.map((k) => k.name) }, 'export started')
    }
    await logStartupBanner({ config, env, port, sql: booted.sql, embeddedDir: s.embedded?.dataDir ?? null, log: log! })
  })()
  ready$.catch((err) => {
    if (stopping) return
    log!.fatal({ err: scrub(err instanceof Error ? `${err.name}: ${err.message}` : String(err), secrets) }, 'boot failed')
  })

  // The stop: no new requests, streams in flight finish within the grace period, then the ledger
  // drains and every connection closes.
  const stop = (reason = 'stop'): Promise<void> => {
    stopping ??= (async () => {
      log!.info({ reason, inFlight: inFlight.count }, 'shutting down: no new requests, waiting for streams in flight')
      plane = null
      abort.abort()
      front.server.close()
      front.server.closeIdleConnections()
      front.readings.stop()
      s.keyPoller?.stop()
      front.metricsServer?.close()
      front.metricsServer?.closeAllConnections()
      await inFlight.idle(config.server.shutdownGraceMs)
      front.server.closeAllConnections()
      await exporter?.stop()
      await releaseServices(s, journal, log!)
      process.removeListener('exit', flushAtExit) // closed: nothing left to write
      front.passthrough.close()
      await front.upstream.close().catch(() => {})
    })()
    return stopping
  }

  return { config, server: front.server, port, ready: ready$, ledger: () => s.ledger, limits: () => s.spend?.limits ?? null, log, stop, isStopping: () => stopping !== null }
}

const LOOPBACK = ['127.0.0.1', '::1', 'localhost']
/** Request-body memory kept between requests for reuse (src/proxy/body/body-memory.ts). */
const BODY_MEMORY_BYTES = 32 * 1024 * 1024

/** Exchanges in flight: a graceful stop waits for them, up to its grace period. */
function inFlightCounter (): { readonly count: number, track: (delta: 1 | -1) => void, idle: (graceMs: number) => Promise<void> } {
  let count = 0
  let idle: (() => void) | null = null
  return {
    get count () { return count },
    track (delta) { count += delta; if (count === 0 && idle) idle() },
    idle (graceMs) {
      if (count === 0) return Promise.resolve()
      return Promise.race([
        new Promise<void>((r) => { idle = r }),
        new Promise<void>((r) => setTimeout(r, graceMs).unref()),
      ])
    },
  }
}

type FrontDoor = ReturnType<typeof frontDoor>

/**
 * What answers before the database does, built before it listens: the upstream pool, the
 * passthrough, metrics and the access log, and the servers. /metrics reads whatever boot has
 * opened so far (`s`); every route that needs the database asks `plane()`, which is null until
 * boot is done.
 */
function frontDoor (config: Config, log: Logger, s: Services, journal: Journal, plane: () => DataPlane | null, exporter: () => Exporter | null) {
  const upstream = createUpstream({ baseUrl: config.openrouter.baseUrl, apiKey: config.openrouter.apiKey, ...config.upstream })
  const idHeaders = identityHeaders(config.identity)
  // The task and message-id headers stay with the sidecar too, whatever they are named.
  idHeaders.add(config.rowKinds.taskHeader).add(config.rowKinds.messageIdHeader)
  const headers: UpstreamHeaderPolicy = { apiKey: config.openrouter.apiKey, appUrl: config.openrouter.appUrl, appTitle: config.openrouter.appTitle, identityHeaders: idHeaders }
  const passthrough = createPassthrough(config.openrouter.baseUrl, config.openrouter.apiKey, config.openrouter.appUrl, config.openrouter.appTitle, idHeaders, log)
  if (!config.server.proxyApiKey && !LOOPBACK.includes(config.server.host)) {
    log.warn({ host: config.server.host }, 'PROXY_API_KEY is not set: anyone who can reach this port can spend the organization\'s OpenRouter key')
  }
  // Postgres's side of /metrics, read in the background: a scrape never waits on the database.
  const readings = startDbReadings(() => s.sql && { sql: s.sql, org: config.organization.id })
  const metrics = createMetrics(() => ledgerReadings(s, journal), {
    apiKey: config.metrics.apiKey,
    maxModels: config.metrics.maxModels,
    db: readings,
    keyBalance: () => s.keyPoller?.latest() ?? null,
    ownPort: config.metrics.port !== undefined,
    organizationId: config.organization.id,
  }, (registry) => {
    registerBudgetMetrics(registry, () => readings.latest(), () => s.spend?.limits.failOpenStats ?? null)
    registerExportMetrics(registry, () => exporter()?.readings() ?? [])
  })
  const access = createAccessLog({ log, enabled: config.accessLog, count: metrics.response })
  // METRICS_PORT: /metrics only on its own listener (loopback by default), not on the data plane.
  const metricsServer = config.metrics.port === undefined ? null : createServer((req, res) => {
    if ((req.url ?? '/').split('?')[0] === '/metrics') return metrics.handler(req, res)
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: this port serves /metrics\n')
  })
  const server = createProxyServer({ log, plane, passthrough, proxyApiKey: config.server.proxyApiKey, adminEnabled: Boolean(config.admin.apiKey),
    metrics: metricsServer ? undefined : metrics.handler, onExchange: access.begin,
    clientTimeouts: { headersMs: config.server.headersTimeoutMs, requestMs: config.server.requestTimeoutMs }, onPassthrough: metrics.passthrough,
    connections: { max: config.server.maxConnections, perIp: config.server.maxConnectionsPerIp } })
  return { upstream, headers, passthrough, server, metricsServer, readings, metrics, access }
}

/** The ledger's and the reconciler's side of /metrics, once boot has made them. */
function ledgerReadings (s: Services, journal: Journal): MetricsSources | null {
  const { ledger, reconciler } = s
  if (!ledger || !reconciler) return null
  return {
    ledgerDepth: () => ledger.depth,
    journalBacklog: () => journal.backlog,
    reconcileActive: () => reconciler.active,
    reconciled: () => reconciler.reconciled,
    reconcileGaveUp: () => reconciler.gaveUp,
    ledgerWritten: () => ledger.written,
    ledgerRejected: () => ledger.rejected,
    ledgerBacklog: () => ledger.backlog(),
  }
}

interface ExchangeHooks {
  isStopping: () => boolean
  track: (delta: 1 | -1) => void
}

/**
 * The routes that need the database, built from what boot opened: the metered path's context,
 * "My usage", and the admin plane.
 */
function dataPlane (config: Config, log: Logger, booted: Booted, front: FrontDoor, hooks: ExchangeHooks, options: StartOptions, exporter: () => Exporter | null): DataPlane {
  const { sql, readSql, limits } = booted
  // "My usage" reads the budget that governs its user; the usage page every listed user's at once,
  // from the read replica when there is one.
  const mayHaveBudgets = (): boolean => limits.mayHaveBudgets
  const budgetFor = budgetForUser(() => sql, config.organization.id, mayHaveBudgets)
  const budgetsFor = budgetsForUsers(readSql, config.organization.id, mayHaveBudgets)
  const summaries = cachedSummary((who: { userId: string | null }, externalUserId: string) =>
    myUsageSummary(sql, { organizationId: config.organization.id, userId: who.userId, externalUserId, budgetFor }), MY_USAGE_CACHE)
  const selfService = config.selfService.model === null ? undefined : createSelfService({
    model: config.selfService.model, name: config.selfService.name, modelsUrl: `${config.openrouter.baseUrl}/models`, log,
    headers: front.headers,
    summary: (who, externalUserId) => summaries.get(who, externalUserId),
  })
  const meter: MeterContext = {
    upstream: front.upstream,
    headers: front.headers,
    rules: {
      organizationId: config.organization.id,
      markupPercent: config.organization.markupPercent,
      maxBodyBytes: config.server.maxBodyBytes,
      identity: { ...config.identity, groupsOf: options.groupsOf, onIgnoredHeaders: config.identity.jwtSecret ? ignoredHeadersWarning(log, config.identity) : undefined },
      rowKinds: { ...config.rowKinds, appHeaders: front.headers.identityHeaders },
    },
    directory: booted.directory,
    ledger: booted.ledger,
    reconciler: booted.reconciler,
    limits,
    log,
    track: hooks.track,
    observe (rec: UsageRecord, res: ServerResponse) { front.metrics.observe(rec); front.access.record(res, rec) },
    stopping: hooks.isStopping,
    selfService,
    allowlists: booted.allowlists,
    bodies: new BodyMemory(BODY_MEMORY_BYTES, front.upstream.writing),
  }
  const admin = createAdminPlane({
    config, sql: () => sql, readSql, log, budgetsFor,
    admissions: () => limits.failOpenStats,
    backlog: () => booted.ledger.backlog(),
    budgetsChanged: () => { summaries.clear(); void limits.changed().then(() => summaries.clear()) },
    exportReadings: () => exporter()?.readings() ?? [],
    allowlistsChanged: () => booted.allowlists.refresh(),
    userForgotten: (userId) => { booted.directory.forget(userId); booted.keys.userForgotten(userId); void limits.refresh(); summaries.clear() },
    keys: booted.keys,
  }) ?? undefined
  const models = modelsList({
    baseUrl: config.openrouter.baseUrl, headers: front.headers, log, identity: meter.rules.identity,
    allowlists: booted.allowlists, extra: selfService?.entry,
  })
  return { meter, admin, models, keys: booted.keys }
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
  keepGcHeadroom({ onRun: (collections, liveMb, spanMs) => sidecar.log.info({ collections, spanMs: Math.round(spanMs), liveMb: Math.round(liveMb) }, `gc: full collections back to back; the heap keeps ${HEADROOM_MB} MB of room from now on`) })
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

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) void main()
