import type { BudgetPeriod, Config } from '../config/config.js'
import type { UnknownVariable } from '../config/unknown-variables.js'
import { toUnits, trimDecimal } from '../lib/decimal.js'

// What an operator needs to read once the sidecar is up, one line each: where a chat app points,
// where the admin page is, which database holds the ledger, every budget and limit in effect and
// where it came from, and the variables set for usage-proxy that it does not read. A pure function
// of the configuration and what the database holds (startup-banner.ts reads that and logs the
// lines). No line holds a secret: keys are named, never shown, and a database URL loses its
// user, password and parameters.

export interface BannerBudget {
  scope: 'organization' | 'default-user' | 'user'
  /** The app's user id; '' for the organization and default-user budgets. */
  userId: string
  /** null: removed through the admin API (the row stays so the environment does not bring it back). */
  limitUsd: string | null
  period: BudgetPeriod
  source: 'env' | 'api'
}

export interface BannerFacts {
  config: Config
  /** The port the data plane listens on (PORT=0 lets the system pick it). */
  port: number
  /** The embedded database's directory; null with DATABASE_URL. */
  embeddedDir: string | null
  /** The organization's budgets rows (organization, default-user, and the first user rows). */
  budgets: BannerBudget[]
  /** User budgets in effect in all: more than `budgets` lists when there are many. */
  userBudgets: number
  /** Why the budgets could not be read (they are then not listed). */
  budgetsError: string | null
  unknown: UnknownVariable[]
}

export interface BannerLine {
  level: 'info' | 'warn'
  msg: string
  fields: Record<string, unknown>
}

/** User budgets listed one per line; the rest are counted. */
export const USER_BUDGETS_SHOWN = 10

const PER: Record<BudgetPeriod, string> = { day: 'per day', week: 'per week', month: 'per month', total: 'in total' }
const WILDCARD = new Set(['0.0.0.0', '::', '[::]'])

export function bannerLines (f: BannerFacts): BannerLine[] {
  const lines: BannerLine[] = []
  const info = (msg: string, fields: Record<string, unknown> = {}): void => { lines.push({ level: 'info', msg, fields }) }
  const warn = (msg: string, fields: Record<string, unknown> = {}): void => { lines.push({ level: 'warn', msg, fields }) }
  const c = f.config

  // Where a chat app points.
  const key = c.server.proxyApiKey ? 'API key: the value of PROXY_API_KEY' : 'any API key (PROXY_API_KEY is not set)'
  if (WILDCARD.has(c.server.host)) {
    const local = `http://127.0.0.1:${f.port}/v1`
    info(`chat apps: base URL http://<this machine's address>:${f.port}/v1, ${key} (HOST=${c.server.host} listens on every interface: ` +
      `${local} from this machine, http://<service name>:${f.port}/v1 from another container of the same compose project)`, { baseUrl: local, host: c.server.host })
  } else {
    const base = `${origin(c.server.host, f.port)}/v1`
    info(`chat apps: base URL ${base}, ${key}`, { baseUrl: base })
  }
  if (c.admin.apiKey) {
    const page = `${WILDCARD.has(c.server.host) ? origin('127.0.0.1', f.port) : origin(c.server.host, f.port)}/admin/`
    info(`admin page: ${page} (sign in with ADMIN_API_KEY)`, { adminUrl: page })
  } else {
    info('admin page: off (set ADMIN_API_KEY to turn it and /admin/v1 on)')
  }

  // Which database holds the ledger.
  if (f.embeddedDir !== null) {
    info(`database: embedded PostgreSQL in ${f.embeddedDir} (for trying usage-proxy out; set DATABASE_URL for production)`, { database: 'embedded', dir: f.embeddedDir })
  } else if (c.databaseUrl) {
    const where = serverOf(c.databaseUrl)
    const replica = c.databaseReadUrl ? `, reports read from ${serverOf(c.databaseReadUrl)} (DATABASE_READ_URL)` : ''
    info(`database: PostgreSQL at ${where} (DATABASE_URL)${replica}`, { database: where })
  }

  budgetLines(f, info, warn)

  for (const u of f.unknown) {
    const hint = u.suggestion === null ? '' : `; did you mean ${u.suggestion}?`
    warn(`unknown variable ${u.name} in ${u.source === '.env' ? '.env' : 'the environment'}: usage-proxy does not read it${hint}`,
      { variable: u.name, source: u.source, suggestion: u.suggestion ?? undefined })
  }
  return lines
}

type Say = (msg: string, fields?: Record<string, unknown>) => void

/** Every budget and rate limit in effect, with its source, and the environment's budgets the admin API overrides. */
function budgetLines (f: BannerFacts, info: Say, warn: Say): void {
  const l = f.config.limits
  let any = false
  if (f.budgetsError !== null) {
    warn(`budgets: could not be read for this summary (${f.budgetsError}); the admission reads them on its own`)
    any = l.orgBudget !== null || l.userBudget !== null
  } else {
    const env: Array<[BannerBudget['scope'], string, Config['limits']['orgBudget'], string]> = [
      ['organization', 'the organization', l.orgBudget, 'ORG_BUDGET'],
      ['default-user', 'every user without a budget of their own', l.userBudget, 'USER_BUDGET'],
    ]
    for (const [scope, who, fromEnv, variable] of env) {
      const row = f.budgets.find((b) => b.scope === scope)
      if (row?.limitUsd != null) {
        any = true
        const from = row.source === 'env' ? `env ${variable}_USD` : 'admin API'
        info(`budget: ${who}: ${amount(row.limitUsd)} ${PER[row.period]} (${from})`, { scope, limitUsd: trimDecimal(row.limitUsd), period: row.period, source: row.source })
      }
      if (fromEnv !== null && row?.source === 'api' && !sameBudget(fromEnv, row)) {
        const now = row.limitUsd === null ? 'removed it' : `set it to ${amount(row.limitUsd)} ${PER[row.period]}`
        warn(`budget: ${variable}_USD=${trimDecimal(fromEnv.limitUsd)} (${variable}_PERIOD=${fromEnv.period}) is overridden: the admin API ${now}, ` +
          `and what the admin API sets stands until it sets another (PUT /admin/v1/budgets/${scope})`,
        { scope, variable: `${variable}_USD`, envLimitUsd: trimDecimal(fromEnv.limitUsd), envPeriod: fromEnv.period, limitUsd: row.limitUsd === null ? null : trimDecimal(row.limitUsd), period: row.period })
      }
    }
    const users = f.budgets.filter((b) => b.scope === 'user' && b.limitUsd !== null)
    for (const b of users) {
      any = true
      info(`budget: user ${b.userId}: ${amount(b.limitUsd!)} ${PER[b.period]} (admin API)`, { scope: 'user', userId: b.userId, limitUsd: trimDecimal(b.limitUsd!), period: b.period, source: b.source })
    }
    if (f.userBudgets > users.length) info(`budgets: ${f.userBudgets - users.length} more user budgets (GET /admin/v1/budgets lists them all)`, { more: f.userBudgets - users.length })
  }
  if (l.userRpm !== undefined) info(`limit: ${l.userRpm} requests per minute per user (env USER_RPM)`, { userRpm: l.userRpm })
  if (l.userMaxConcurrent !== undefined) info(`limit: ${l.userMaxConcurrent} requests at a time per user (env USER_MAX_CONCURRENT)`, { userMaxConcurrent: l.userMaxConcurrent })
  any ||= l.userRpm !== undefined || l.userMaxConcurrent !== undefined
  if (any) {
    const unchecked = l.failMode === 'open' ? 'serves requests unchecked' : 'answers 503'
    info(`budgets: when PostgreSQL cannot be asked, BUDGET_FAIL_MODE=${l.failMode} ${unchecked}`, { failMode: l.failMode })
  } else if (f.budgetsError === null) {
    info('budgets and limits: none (ORG_BUDGET_USD, USER_BUDGET_USD, USER_RPM, USER_MAX_CONCURRENT or /admin/v1/budgets set them)')
  }
}

function sameBudget (env: { limitUsd: string, period: BudgetPeriod }, row: BannerBudget): boolean {
  return row.limitUsd !== null && row.period === env.period && toUnits(row.limitUsd) === toUnits(env.limitUsd)
}

function amount (usd: string): string { return `${trimDecimal(usd)} USD` }

function origin (host: string, port: number): string {
  return `http://${host.includes(':') && !host.startsWith('[') ? `[${host}]` : host}:${port}`
}

/**
 * host:port/dbname of a postgres:// URL, and nothing else: no user, no password, no parameters
 * (a password may sit in either). Read as text, so a URL with several hosts or a password with
 * odd characters is shown as safely as a plain one.
 */
export function serverOf (url: string): string {
  const rest = url.replace(/^[a-z]+:\/\//i, '').split(/[?#]/)[0]
  const slash = rest.indexOf('/', rest.lastIndexOf('@') + 1)
  const authority = slash === -1 ? rest : rest.slice(0, slash)
  const db = slash === -1 ? '' : rest.slice(slash + 1)
  const hosts = authority.slice(authority.lastIndexOf('@') + 1)
  const shown = hosts === '' ? 'the local socket' : hosts.split(',').map((h) => /:\d+$/.test(h) ? h : `${h}:5432`).join(',')
  return `${shown}/${db === '' ? '(default database)' : safeDecode(db)}`
}

function safeDecode (s: string): string {
  try { return decodeURIComponent(s) } catch { return s }
}
