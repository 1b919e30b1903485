import { z } from 'zod'

// The environment is the sidecar's whole public configuration surface. Every name below is
// documented in README.md (a test keeps the two in step), and nothing else reads process.env.

const decimalText = /^\d{1,5}(\.\d{1,4})?$/
const orgId = /^[A-Za-z0-9_.-]{1,100}$/

const port = z.coerce.number().int().min(0).max(65535)
const positiveInt = z.coerce.number().int().positive()
const bool = z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => v === 'true' || v === '1' || v === 'yes')
const url = z.string().url().refine((u) => /^https?:\/\//.test(u), 'must be an http(s) URL')
const optionalText = z.string().min(1).optional()
const budgetUsd = /^\d{1,12}(\.\d{1,12})?$/
const budgetPeriod = z.enum(['day', 'week', 'month', 'total']).default('month')
const header = (name: string) => z.string().regex(/^[A-Za-z0-9-]+$/, 'must be an HTTP header name').default(name).transform((h) => h.toLowerCase())

export const envSchema = z.object({
  OPENROUTER_API_KEY: z.string().min(8, 'must be the organization\'s OpenRouter key (sk-or-v1-...)')
    .refine((k) => !k.includes('REPLACE_ME'), 'is still the gen-env placeholder: paste the organization\'s OpenRouter key'),
  OPENROUTER_EXTERNAL_USER: z.string().regex(orgId, 'must be 1-100 characters of A-Z a-z 0-9 _ . - (e.g. mai_client_63a4eb6d)'),
  ORGANIZATION_NAME: z.string().trim().min(1, 'must name the client organization'),
  DATABASE_URL: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL').optional(),
  OPENROUTER_BASE_URL: url.default('https://openrouter.ai/api/v1').transform((u) => u.replace(/\/+$/, '')),
  PORT: port.default(8787),
  // Unset: 0.0.0.0 with a PROXY_API_KEY, 127.0.0.1 without (see loadConfig).
  HOST: z.string().min(1).optional(),
  MARKUP_PERCENT: z.string().trim().regex(decimalText, 'must be a decimal percentage such as 0, 15 or 12.5 (at most 4 decimals)').default('0'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  // Unset: no HTTP-Referer, so OpenRouter does not attribute every deployment to one app.
  APP_URL: url.optional(),
  APP_TITLE: z.string().min(1).default('usage-proxy'),
  PROXY_API_KEY: optionalText,
  DATA_DIR: z.string().min(1).default('./data'),
  FORWARD_USER_INFO_HEADER_USER_ID: header('X-OpenWebUI-User-Id'),
  FORWARD_USER_INFO_HEADER_USER_NAME: header('X-OpenWebUI-User-Name'),
  FORWARD_USER_INFO_HEADER_USER_EMAIL: header('X-OpenWebUI-User-Email'),
  FORWARD_USER_INFO_HEADER_USER_ROLE: header('X-OpenWebUI-User-Role'),
  FORWARD_USER_INFO_HEADER_CHAT_ID: header('X-OpenWebUI-Chat-Id'),
  FORWARD_USER_INFO_HEADER_JWT: header('X-OpenWebUI-User-Jwt'),
  FORWARD_USER_INFO_HEADER_JWT_SECRET: z.string().min(16, 'must be at least 16 characters').optional(),
  TRUST_BODY_USER: bool.optional(),
  // Groups (README "Groups"): Open WebUI's `{{USER_GROUPS}}` header, or a claim of the signed identity
  USER_GROUPS_HEADER: header('X-OpenWebUI-User-Groups'),
  USER_GROUPS_CLAIM: z.string().regex(/^[A-Za-z0-9_.:-]{1,100}$/, 'must be a JWT claim name such as groups').default('groups'),
  TRUST_GROUP_HEADER: bool.default(false),
  MAX_BODY_BYTES: positiveInt.default(20 * 1024 * 1024),
  CLIENT_HEADERS_TIMEOUT_MS: positiveInt.default(30_000),
  CLIENT_REQUEST_TIMEOUT_MS: positiveInt.default(600_000),
  UPSTREAM_HEADERS_TIMEOUT_MS: positiveInt.default(300_000),
  UPSTREAM_BODY_TIMEOUT_MS: positiveInt.default(300_000),
  UPSTREAM_CONNECTIONS: positiveInt.default(1024),
  SHUTDOWN_GRACE_MS: z.coerce.number().int().min(0).default(30_000),
  RECONCILE_MAX_WAIT_MS: positiveInt.default(120_000),
  LEDGER_BATCH_SIZE: z.coerce.number().int().min(1).max(10_000).default(2000),
  LEDGER_FLUSH_MS: positiveInt.default(50),
  DB_CONNECT_RETRY_MAX_MS: positiveInt.default(10_000),
  EMBEDDED_DB_PORT: port.default(54320),
  ADMIN_API_KEY: z.string().min(16, 'must be at least 16 characters (e.g. openssl rand -hex 24)').optional(),
  REQUIRE_USER_IDENTITY: bool.default(false),
  MAX_CONNECTIONS: positiveInt.default(4096),
  MAX_CONNECTIONS_PER_IP: positiveInt.default(2048),
  // Operations: the access log, /metrics, whether a request without the proxy key passes, Open WebUI's task headers
  ALLOW_UNAUTHENTICATED: bool.default(false),
  ACCESS_LOG: z.enum(['on', 'off']).default('on'),
  METRICS_API_KEY: z.string().min(16, 'must be at least 16 characters (e.g. openssl rand -hex 24)').optional(),
  METRICS_PORT: port.optional(),
  METRICS_HOST: z.string().min(1).default('127.0.0.1'),
  METRICS_MAX_MODELS: positiveInt.max(1000).default(50),
  FORWARD_SESSION_INFO_HEADER_CHAT_ID: z.string().regex(/^[A-Za-z0-9-]+$/, 'must be an HTTP header name').transform((h) => h.toLowerCase()).optional(),
  TASK_HEADER: header('X-OpenWebUI-Task'),
  MESSAGE_ID_HEADER: header('X-OpenWebUI-Message-Id'),
  // Spend controls (README "Budgets and limits")
  ORG_BUDGET_USD: z.string().trim().regex(budgetUsd, 'must be a decimal amount in USD such as 500 or 20.00').optional(),
  ORG_BUDGET_PERIOD: budgetPeriod,
  USER_BUDGET_USD: z.string().trim().regex(budgetUsd, 'must be a decimal amount in USD such as 500 or 20.00').optional(),
  USER_BUDGET_PERIOD: budgetPeriod,
  BUDGET_EXCEEDED_MESSAGE: z.string().min(1).optional(),
  BUDGET_FAIL_MODE: z.enum(['open', 'closed']).default('open'),
  BUDGET_WARN_PERCENT: z.coerce.number().min(1).max(100).default(80),
  ALERT_WEBHOOK_URL: url.optional(),
  BUDGET_DEFAULT_MAX_TOKENS: positiveInt.default(4096),
  BUDGET_IMAGE_TOKENS: positiveInt.default(8192),
  BUDGET_UNKNOWN_MODEL_USD_PER_MTOK: z.string().trim().regex(budgetUsd, 'must be a decimal USD price per million tokens such as 60').default('60'),
  BUDGET_REFRESH_MS: positiveInt.default(2000),
  BUDGET_RESERVATION_TTL_MS: positiveInt.default(1_800_000),
  BUDGET_DB_TIMEOUT_MS: positiveInt.default(2000),
  USER_RPM: positiveInt.optional(),
  // API keys (README "API keys for apps"): how often each replica re-reads them; a revocation takes effect within it.
  API_KEYS_REFRESH_MS: positiveInt.min(100).max(60_000).default(2000),
  USER_MAX_CONCURRENT: positiveInt.optional(),
  DATABASE_READ_URL: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL').optional(),
  // Fleet (docs/scale.md, "Many sidecars, one Postgres"): connections per sidecar and a deadline on every query.
  DATABASE_DIRECT_URL: z.string().regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL').optional(),
  DATABASE_POOL_MAX: positiveInt.max(100).default(4),
  DATABASE_ADMISSION_POOL_MAX: positiveInt.max(20).default(2),
  DATABASE_QUERY_TIMEOUT_MS: positiveInt.min(100).default(15_000),
  RETENTION_MONTHS: positiveInt.optional(),
  SELF_SERVICE_MODEL: z.string().trim().min(1).max(200).regex(/^[^\s]+$/, 'must be a model id without spaces, or off').default('usage-proxy/my-usage'),
  SELF_SERVICE_MODEL_NAME: z.string().trim().min(1).max(200).default('My usage'),
  // OpenTelemetry (docs/telemetry.md): the standard OTEL_* names, read here and handed to the SDK.
  OTEL_EXPORTER_OTLP_ENDPOINT: url.optional(),
  OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: url.optional(),
  OTEL_EXPORTER_OTLP_PROTOCOL: z.string().refine((p) => p !== 'grpc', 'grpc is not supported: use http/protobuf or http/json')
    .pipe(z.enum(['http/protobuf', 'http/json'])).default('http/protobuf'),
  OTEL_EXPORTER_OTLP_HEADERS: z.string().refine((h) => parseOtlpHeaders(h) !== null, 'must be name=value pairs separated by commas (values percent-encoded)').optional(),
  OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: z.string().toLowerCase().pipe(z.enum(['cumulative', 'delta', 'lowmemory'])).default('cumulative'),
  OTEL_EXPORTER_OTLP_TIMEOUT: positiveInt.default(10_000),
  OTEL_METRIC_EXPORT_INTERVAL: positiveInt.default(60_000),
  OTEL_SERVICE_NAME: z.string().trim().min(1).default('usage-proxy'),
  OTEL_RESOURCE_ATTRIBUTES: z.string().refine((h) => parseOtlpHeaders(h) !== null, 'must be key=value pairs separated by commas (values percent-encoded)').optional(),
  OTEL_SDK_DISABLED: bool.default(false),
  // Export to billing receivers (README "Send usage to your billing system", docs/export.md)
  STRIPE_SECRET_KEY: z.string().regex(/^(sk|rk)_[A-Za-z0-9_]{8,}$/, 'must be a Stripe secret or restricted key (sk_live_..., sk_test_..., rk_...)').optional(),
  STRIPE_API_BASE: url.default('https://api.stripe.com').transform((u) => u.replace(/\/+$/, '')),
  STRIPE_METER_EVENT_NAME: z.string().trim().min(1).max(100).default('llm_usage'),
  STRIPE_METER_VALUE: z.enum(['billed_micro_usd', 'tokens']).default('billed_micro_usd'),
  STRIPE_CUSTOMER_ID: z.string().regex(/^cus_[A-Za-z0-9]{1,250}$/, 'must be a Stripe customer id (cus_...)').optional(),
  CLOUDEVENTS_URL: url.optional(),
  CLOUDEVENTS_SECRET: z.string().min(16, 'must be at least 16 characters (e.g. openssl rand -hex 24)').optional(),
  CLOUDEVENTS_SOURCE: z.string().trim().min(1).max(500).optional(),
  CLOUDEVENTS_BATCH_SIZE: positiveInt.max(1000).default(100),
  EXPORT_LEASE_MS: positiveInt.min(100).default(15_000),
  EXPORT_POLL_MS: positiveInt.default(1000),
  EXPORT_RETRY_MAX_MS: positiveInt.default(60_000),
})

export type Env = z.infer<typeof envSchema>

export interface Config {
  openrouter: { apiKey: string, baseUrl: string, appUrl: string | undefined, appTitle: string }
  organization: { id: string, name: string, markupPercent: string }
  databaseUrl: string | undefined
  server: {
    port: number, host: string, maxBodyBytes: number, shutdownGraceMs: number, proxyApiKey: string | undefined,
    headersTimeoutMs: number, requestTimeoutMs: number
    maxConnections: number, maxConnectionsPerIp: number
  }
  upstream: { headersTimeoutMs: number, bodyTimeoutMs: number, connections: number }
  identity: {
    userIdHeader: string, userNameHeader: string, userEmailHeader: string, userRoleHeader: string,
    chatIdHeader: string, jwtHeader: string, jwtSecret: string | undefined, trustBodyUser: boolean
    requireUserIdentity: boolean
    /** USER_GROUPS_HEADER, USER_GROUPS_CLAIM, TRUST_GROUP_HEADER: where a user's groups come from. */
    groupsHeader: string, groupsClaim: string, trustGroupHeader: boolean
  }
  ledger: { dataDir: string, batchSize: number, flushMs: number, reconcileMaxWaitMs: number }
  db: {
    connectRetryMaxMs: number, embeddedPort: number
    /** DATABASE_POOL_MAX: connections of the primary pool, and of the read pool when DATABASE_READ_URL is set. */
    poolMax: number
    /** DATABASE_ADMISSION_POOL_MAX: the admissions' own connections on the primary, opened lazily. */
    admissionPoolMax: number
    /** DATABASE_DIRECT_URL: migrations run over it when set (a pooler in front of DATABASE_URL then never sees DDL). */
    directUrl: string | undefined
    /** DATABASE_QUERY_TIMEOUT_MS: the longest any query waits, for a connection and for its answer. */
    queryTimeoutMs: number
  }
  logLevel: Env['LOG_LEVEL']
  admin: { apiKey: string | undefined }
  accessLog: boolean
  /** METRICS_PORT set: /metrics is served only there, on METRICS_HOST. */
  metrics: { apiKey: string | undefined, port: number | undefined, host: string, maxModels: number }
  /** Open WebUI's per-connection custom headers ({{TASK}}, {{MESSAGE_ID}}). */
  rowKinds: { taskHeader: string, messageIdHeader: string }
  limits: LimitsConfig
  /** A read replica for reports (admin, statements, usage); writes and budgets use databaseUrl. */
  databaseReadUrl: string | undefined
  /** Whole months of raw rows kept besides the current one; undefined keeps everything. */
  retentionMonths: number | undefined
  /** The virtual "My usage" model; model null when SELF_SERVICE_MODEL=off. */
  selfService: { model: string | null, name: string }
  /** API_KEYS_REFRESH_MS: each replica re-reads the API keys this often. */
  keys: { refreshMs: number }
  export: ExportConfig
}

export interface TelemetryConfig {
  /** Where metrics are POSTed: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT as is, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/metrics. */
  metricsUrl: string
  protocol: 'http/protobuf' | 'http/json'
  /** Secrets as often as not (an API key header): never logged. */
  headers: Record<string, string>
  temporality: 'cumulative' | 'delta' | 'lowmemory'
  /** How long one export may take, the exporter's own retries (429, 502-504, refused connections) included. */
  timeoutMs: number
  exportIntervalMs: number
  serviceName: string
  resourceAttributes: Record<string, string>
  /** The upstream's host and port (OPENROUTER_BASE_URL): server.address and server.port. */
  server: { address: string, port: number }
}

/** The export of ledger rows to receivers; a sink is null when not configured. */
export interface ExportConfig {
  stripe: { secretKey: string, apiBase: string, eventName: string, value: 'billed_micro_usd' | 'tokens', customerId: string | undefined } | null
  cloudEvents: { url: string, secret: string | undefined, source: string, batchSize: number } | null
  /** OpenTelemetry metrics; null (and the SDK never loaded) unless an OTLP endpoint is set. */
  otel: TelemetryConfig | null
  leaseMs: number
  pollMs: number
  retryMaxMs: number
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/i

export interface LimitsConfig {
  orgBudget: { limitUsd: string, period: BudgetPeriod } | null
  userBudget: { limitUsd: string, period: BudgetPeriod } | null
  exceededMessage: string | undefined
  failMode: 'open' | 'closed'
  warnPercent: number
  alertWebhookUrl: string | undefined
  defaultMaxTokens: number
  unknownModelUsdPerMtok: string
  /** Prompt tokens an image counts as when the model lists no per-image price (BUDGET_IMAGE_TOKENS). */
  imageTokens: number
  refreshMs: number
  reservationTtlMs: number
  dbTimeoutMs: number
  userRpm: number | undefined
  userMaxConcurrent: number | undefined
}

export type BudgetPeriod = 'day' | 'week' | 'month' | 'total'

export class ConfigError extends Error {
  constructor (readonly problems: string[]) {
    super('invalid configuration:\n' + problems.map((p) => '  - ' + p).join('\n'))
    this.name = 'ConfigError'
  }
}

/** Validates the whole environment and reports every problem at once, each naming its variable. */
export function loadConfig (env: Record<string, string | undefined>): Config {
  // An empty variable means "not set": compose files often write `FOO=` for optional values.
  const present: Record<string, string> = {}
  for (const key of Object.keys(envSchema.shape)) {
    const value = env[key]
    if (value !== undefined && value !== '') present[key] = value
  }
  const parsed = envSchema.safeParse(present)
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const name = String(issue.path[0] ?? '(environment)')
      const message = issue.code === 'invalid_type' && present[name] === undefined ? 'is required but not set' : issue.message
      return `${name} ${message}`
    })
    throw new ConfigError(problems)
  }
  const e = parsed.data
  if (e.DATABASE_DIRECT_URL && !e.DATABASE_URL) {
    throw new ConfigError(['DATABASE_DIRECT_URL is set without DATABASE_URL: it only serves migrations next to a DATABASE_URL (set DATABASE_URL, or unset DATABASE_DIRECT_URL)'])
  }
  if (e.CLIENT_HEADERS_TIMEOUT_MS > e.CLIENT_REQUEST_TIMEOUT_MS) {
    throw new ConfigError(['CLIENT_HEADERS_TIMEOUT_MS must not exceed CLIENT_REQUEST_TIMEOUT_MS'])
  }
  // Without a key anyone who reaches the port spends the organization's OpenRouter key: listen
  // on loopback unless the operator names another address AND says this is intended.
  if (!e.PROXY_API_KEY && e.HOST !== undefined && !LOOPBACK.test(e.HOST) && !e.ALLOW_UNAUTHENTICATED) {
    throw new ConfigError([`PROXY_API_KEY is not set, so HOST=${e.HOST} would let anyone who reaches it spend the organization's OpenRouter key: ` +
      'set PROXY_API_KEY (gen-env writes one), or set ALLOW_UNAUTHENTICATED=true to accept that'])
  }
  const host = e.HOST ?? (e.PROXY_API_KEY ? '0.0.0.0' : '127.0.0.1')
  return {
    openrouter: { apiKey: e.OPENROUTER_API_KEY, baseUrl: e.OPENROUTER_BASE_URL, appUrl: e.APP_URL, appTitle: e.APP_TITLE },
    organization: { id: e.OPENROUTER_EXTERNAL_USER, name: e.ORGANIZATION_NAME, markupPercent: e.MARKUP_PERCENT },
    databaseUrl: e.DATABASE_URL,
    server: {
      port: e.PORT, host, maxBodyBytes: e.MAX_BODY_BYTES, shutdownGraceMs: e.SHUTDOWN_GRACE_MS, proxyApiKey: e.PROXY_API_KEY,
      headersTimeoutMs: e.CLIENT_HEADERS_TIMEOUT_MS, requestTimeoutMs: e.CLIENT_REQUEST_TIMEOUT_MS,
      maxConnections: e.MAX_CONNECTIONS, maxConnectionsPerIp: e.MAX_CONNECTIONS_PER_IP,
    },
    upstream: { headersTimeoutMs: e.UPSTREAM_HEADERS_TIMEOUT_MS, bodyTimeoutMs: e.UPSTREAM_BODY_TIMEOUT_MS, connections: e.UPSTREAM_CONNECTIONS },
    identity: {
      userIdHeader: e.FORWARD_USER_INFO_HEADER_USER_ID,
      userNameHeader: e.FORWARD_USER_INFO_HEADER_USER_NAME,
      userEmailHeader: e.FORWARD_USER_INFO_HEADER_USER_EMAIL,
      userRoleHeader: e.FORWARD_USER_INFO_HEADER_USER_ROLE,
      // Open WebUI's own name for it is accepted too; ours wins when both are set.
      chatIdHeader: present.FORWARD_USER_INFO_HEADER_CHAT_ID === undefined && e.FORWARD_SESSION_INFO_HEADER_CHAT_ID
        ? e.FORWARD_SESSION_INFO_HEADER_CHAT_ID
        : e.FORWARD_USER_INFO_HEADER_CHAT_ID,
      jwtHeader: e.FORWARD_USER_INFO_HEADER_JWT,
      jwtSecret: e.FORWARD_USER_INFO_HEADER_JWT_SECRET,
      // With signed identity configured, an unsigned `user` in the body could name anyone.
      trustBodyUser: e.TRUST_BODY_USER ?? !e.FORWARD_USER_INFO_HEADER_JWT_SECRET,
      requireUserIdentity: e.REQUIRE_USER_IDENTITY,
      groupsHeader: e.USER_GROUPS_HEADER,
      groupsClaim: e.USER_GROUPS_CLAIM,
      // With signed identity configured, an unsigned group header could name any group.
      trustGroupHeader: e.TRUST_GROUP_HEADER,
    },
    ledger: { dataDir: e.DATA_DIR, batchSize: e.LEDGER_BATCH_SIZE, flushMs: e.LEDGER_FLUSH_MS, reconcileMaxWaitMs: e.RECONCILE_MAX_WAIT_MS },
    db: {
      connectRetryMaxMs: e.DB_CONNECT_RETRY_MAX_MS, embeddedPort: e.EMBEDDED_DB_PORT,
      poolMax: e.DATABASE_POOL_MAX, admissionPoolMax: e.DATABASE_ADMISSION_POOL_MAX,
      directUrl: e.DATABASE_DIRECT_URL, queryTimeoutMs: e.DATABASE_QUERY_TIMEOUT_MS,
    },
    logLevel: e.LOG_LEVEL,
    admin: { apiKey: e.ADMIN_API_KEY },
    accessLog: e.ACCESS_LOG === 'on',
    metrics: { apiKey: e.METRICS_API_KEY, port: e.METRICS_PORT, host: e.METRICS_HOST, maxModels: e.METRICS_MAX_MODELS },
    rowKinds: { taskHeader: e.TASK_HEADER, messageIdHeader: e.MESSAGE_ID_HEADER },
    limits: {
      orgBudget: e.ORG_BUDGET_USD === undefined ? null : { limitUsd: e.ORG_BUDGET_USD, period: e.ORG_BUDGET_PERIOD },
      userBudget: e.USER_BUDGET_USD === undefined ? null : { limitUsd: e.USER_BUDGET_USD, period: e.USER_BUDGET_PERIOD },
      exceededMessage: e.BUDGET_EXCEEDED_MESSAGE,
      failMode: e.BUDGET_FAIL_MODE,
      warnPercent: e.BUDGET_WARN_PERCENT,
      alertWebhookUrl: e.ALERT_WEBHOOK_URL,
      defaultMaxTokens: e.BUDGET_DEFAULT_MAX_TOKENS,
      unknownModelUsdPerMtok: e.BUDGET_UNKNOWN_MODEL_USD_PER_MTOK,
      imageTokens: e.BUDGET_IMAGE_TOKENS,
      refreshMs: e.BUDGET_REFRESH_MS,
      reservationTtlMs: e.BUDGET_RESERVATION_TTL_MS,
      dbTimeoutMs: e.BUDGET_DB_TIMEOUT_MS,
      userRpm: e.USER_RPM,
      userMaxConcurrent: e.USER_MAX_CONCURRENT,
    },
    databaseReadUrl: e.DATABASE_READ_URL,
    retentionMonths: e.RETENTION_MONTHS,
    selfService: { model: e.SELF_SERVICE_MODEL.toLowerCase() === 'off' ? null : e.SELF_SERVICE_MODEL, name: e.SELF_SERVICE_MODEL_NAME },
    keys: { refreshMs: e.API_KEYS_REFRESH_MS },
    export: exportConfig(e),
  }
}

function exportConfig (e: Env): ExportConfig {
  if (e.STRIPE_CUSTOMER_ID && !e.STRIPE_SECRET_KEY) {
    throw new ConfigError(['STRIPE_CUSTOMER_ID is set without STRIPE_SECRET_KEY: it seeds the organization\'s customer for the Stripe export, which STRIPE_SECRET_KEY turns on'])
  }
  return {
    stripe: e.STRIPE_SECRET_KEY === undefined ? null : {
      secretKey: e.STRIPE_SECRET_KEY, apiBase: e.STRIPE_API_BASE, eventName: e.STRIPE_METER_EVENT_NAME, value: e.STRIPE_METER_VALUE, customerId: e.STRIPE_CUSTOMER_ID,
    },
    cloudEvents: e.CLOUDEVENTS_URL === undefined ? null : {
      url: e.CLOUDEVENTS_URL, secret: e.CLOUDEVENTS_SECRET, source: e.CLOUDEVENTS_SOURCE ?? e.OPENROUTER_EXTERNAL_USER, batchSize: e.CLOUDEVENTS_BATCH_SIZE,
    },
    otel: telemetryConfig(e),
    leaseMs: e.EXPORT_LEASE_MS,
    pollMs: e.EXPORT_POLL_MS,
    retryMaxMs: e.EXPORT_RETRY_MAX_MS,
  }
}

function telemetryConfig (e: Env): TelemetryConfig | null {
  const base = e.OTEL_EXPORTER_OTLP_ENDPOINT
  if (e.OTEL_SDK_DISABLED || (base === undefined && e.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT === undefined)) return null
  // The OTLP rule: the signal's own variable is the whole URL, the general one a base the signal's path is added to.
  const metricsUrl = e.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT ?? base!.replace(/\/+$/, '') + '/v1/metrics'
  const upstream = new URL(e.OPENROUTER_BASE_URL)
  return {
    metricsUrl,
    protocol: e.OTEL_EXPORTER_OTLP_PROTOCOL,
    headers: parseOtlpHeaders(e.OTEL_EXPORTER_OTLP_HEADERS ?? '') ?? {},
    temporality: e.OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE,
    timeoutMs: e.OTEL_EXPORTER_OTLP_TIMEOUT,
    exportIntervalMs: e.OTEL_METRIC_EXPORT_INTERVAL,
    serviceName: e.OTEL_SERVICE_NAME,
    resourceAttributes: parseOtlpHeaders(e.OTEL_RESOURCE_ATTRIBUTES ?? '') ?? {},
    server: { address: upstream.hostname, port: upstream.port !== '' ? Number(upstream.port) : upstream.protocol === 'https:' ? 443 : 80 },
  }
}

/**
 * OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES: `key=value` pairs separated by commas,
 * values percent-encoded (the W3C Baggage format the OpenTelemetry spec names). Null when malformed.
 */
export function parseOtlpHeaders (text: string): Record<string, string> | null {
  const out: Record<string, string> = {}
  for (const part of text.split(',')) {
    if (part.trim() === '') continue
    const eq = part.indexOf('=')
    if (eq <= 0) return null
    const key = part.slice(0, eq).trim()
    if (key === '') return null
    try {
      out[key] = decodeURIComponent(part.slice(eq + 1).trim())
    } catch {
      return null
    }
  }
  return out
}

/** What a command that only reads the ledger (`usage-proxy statement`) needs: the database and the organization. */
export function loadDatabaseConfig (env: Record<string, string | undefined>): { databaseUrl: string | undefined, organizationId: string | undefined, dataDir: string, embeddedPort: number } {
  const schema = envSchema.pick({ DATABASE_URL: true, DATA_DIR: true, EMBEDDED_DB_PORT: true }).extend({ OPENROUTER_EXTERNAL_USER: envSchema.shape.OPENROUTER_EXTERNAL_USER.optional() })
  const present: Record<string, string> = {}
  for (const key of Object.keys(schema.shape)) if (env[key] !== undefined && env[key] !== '') present[key] = env[key]!
  const parsed = schema.safeParse(present)
  if (!parsed.success) throw new ConfigError(parsed.error.issues.map((i) => `${String(i.path[0])} ${i.message}`))
  const e = parsed.data
  return { databaseUrl: e.DATABASE_URL, organizationId: e.OPENROUTER_EXTERNAL_USER, dataDir: e.DATA_DIR, embeddedPort: e.EMBEDDED_DB_PORT }
}
