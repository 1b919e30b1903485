import { envSchema } from './config.js'

// A variable the sidecar does not read is ignored without a word, so a typo (`USER_RMP=5`) would
// silently leave a limit off. At start-up every name that looks meant for usage-proxy but is not
// one it reads is named, with the closest name it does read. Only names are ever shown, never
// values: an unknown variable may well hold a key.

/** Every variable the sidecar reads. */
export const KNOWN_VARIABLES: readonly string[] = Object.keys(envSchema.shape)

/**
 * Names that look meant for usage-proxy: its own namespace and the distinctive first words of
 * the names it reads. Generic first words (LOG_, APP_, DATA_, MAX_, DB_, CLIENT_, ...) are shared
 * with too much other software to claim; a near miss of a known name is caught whatever it
 * starts with (see unknownVariables).
 */
export const PREFIXES: readonly string[] = ['USAGE_PROXY_', 'OPENROUTER_', 'ORGANIZATION_', 'ORG_', 'DATABASE_', 'PROXY_', 'ADMIN_',
  'LEDGER_', 'BUDGET_', 'USER_', 'METRICS_', 'FORWARD_', 'UPSTREAM_', 'RECONCILE_', 'SHUTDOWN_', 'EMBEDDED_', 'MARKUP_', 'ALERT_', 'RETENTION_']

/** Read by the test suite and the benchmarks, never by the sidecar: not a mistake to have set. */
const READ_ELSEWHERE = new Set(['BUDGET_MODEL_SEED', 'LEDGER_PROFILE_DIR'])

export interface UnknownVariable {
  name: string
  /** Where it was set: the .env file, or the process environment. */
  source: '.env' | 'environment'
  /** The closest name the sidecar reads, when one is close enough to be the intended one. */
  suggestion: string | null
}

/**
 * The names in `env` that look meant for usage-proxy and that it does not read. `fromFile` lists
 * the names that came from the .env file (envFileNames); the rest came from the environment.
 */
export function unknownVariables (env: Record<string, string | undefined>, fromFile: ReadonlySet<string> = new Set()): UnknownVariable[] {
  const known = new Set(KNOWN_VARIABLES)
  const out: UnknownVariable[] = []
  for (const name of Object.keys(env).sort()) {
    if (known.has(name) || READ_ELSEWHERE.has(name)) continue
    // OpenTelemetry's own namespace: the SDK reads more OTEL_* names than the sidecar lists
    // (OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_EXPORTER_OTLP_COMPRESSION, ...), so none is a mistake.
    if (name.startsWith('OTEL_')) continue
    const source = fromFile.has(name) ? '.env' : 'environment'
    // Kubernetes writes a service's address into every pod as SERVICE_NAME_SERVICE_HOST,
    // SERVICE_NAME_PORT=tcp://..., ...: a service named usage-proxy is not a typo.
    if (source === 'environment' && isServiceLink(name, env[name])) continue
    // Compared in upper case: names are case-sensitive, so `user_rpm` is USER_RPM's near miss.
    const upper = name.toUpperCase()
    const near = closest(upper)
    const prefixed = PREFIXES.some((p) => upper.startsWith(p))
    // The namespace a reader might assume: USAGE_PROXY_PORT for PORT.
    const unprefixed = upper.startsWith('USAGE_PROXY_') && known.has(upper.slice('USAGE_PROXY_'.length)) ? upper.slice('USAGE_PROXY_'.length) : null
    const suggestion = unprefixed ?? (near !== null && near.distance <= allowance(upper, prefixed) ? near.name : null)
    if (prefixed || suggestion !== null) out.push({ name, source, suggestion })
  }
  return out
}

/**
 * Edits a name may be from a known one and still count as its typo. Without a project prefix the
 * bar is higher, and short names never qualify: HOSTS is not a typo of HOST.
 */
function allowance (name: string, prefixed: boolean): number {
  if (prefixed) return Math.max(2, Math.floor(name.length / 4))
  if (name.length < 6) return 0
  return name.length < 12 ? 1 : 2
}

const SERVICE_LINK = /_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$/

function isServiceLink (name: string, value: string | undefined): boolean {
  if (SERVICE_LINK.test(name)) return true
  return name.endsWith('_PORT') && /^(tcp|udp|sctp):\/\//.test(value ?? '')
}

/** The known name with the fewest edits to `name` (ties: the first in the schema's order). */
export function closest (name: string): { name: string, distance: number } | null {
  let best: { name: string, distance: number } | null = null
  for (const k of KNOWN_VARIABLES) {
    const d = editDistance(name, k)
    if (best === null || d < best.distance) best = { name: k, distance: d }
  }
  return best
}

/**
 * Edits (insert, delete, substitute, or swap two neighbours) from a to b: the optimal string
 * alignment distance, so USER_RMP is one edit from USER_RPM.
 */
export function editDistance (a: string, b: string): number {
  const rows: number[][] = []
  for (let i = 0; i <= a.length; i++) {
    rows.push([i])
    for (let j = 1; j <= b.length; j++) {
      if (i === 0) { rows[0].push(j); continue }
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      let d = Math.min(rows[i - 1][j] + 1, rows[i][j - 1] + 1, rows[i - 1][j - 1] + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, rows[i - 2][j - 2] + 1)
      rows[i].push(d)
    }
  }
  return rows[a.length][b.length]
}
