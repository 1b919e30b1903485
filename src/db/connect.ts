import postgres from 'postgres'
import type { Logger } from '../lib/log.js'
import { StartupError } from '../lib/startup-error.js'
import { postgresMended } from './postgres-mend.js'

export type Sql = postgres.Sql<{}>
/** A pool or a transaction on it: for writes that may join the caller's transaction. */
export type Querier = Sql | postgres.TransactionSql<{}>

export interface ConnectOptions {
  url: string
  /** The setting the URL came from, named in errors (DATABASE_URL unless told). */
  variable?: string
  max?: number
  log: Logger
  /** Longest pause between two connection attempts at boot. */
  retryMaxMs: number
  signal?: AbortSignal
}

const MENDED = postgresMended()

/**
 * The pool options every connection of the sidecar and its commands uses, whatever sits in front
 * of Postgres. `prepare: false`: a named prepared statement lives in one backend's session, and a
 * pooler in transaction mode (PgBouncer, Supabase's port 6543, Neon's -pooler host) hands the
 * next transaction another backend, where it "does not exist". Unnamed statements are parsed
 * with each query and work through any pooler. No other startup parameter than
 * application_name (which PgBouncer tracks): a pooler refuses the ones it does not know.
 * `max_pipeline: 0`: one query in flight per connection. With `prepare: false` a query with
 * parameters goes out describe-first (Parse, Describe, Flush; Bind once the types are back),
 * and postgres.js would pipeline it behind a query still running. A pooler in transaction mode
 * gives the backend back at that query's ReadyForQuery, so the Describe's answer or the Bind
 * lands on another backend: the connection waits for good, or the Bind runs someone else's
 * unnamed statement (PgBouncer 1.18; pgbouncer/pgbouncer#759). Nothing was ever pipelined behind
 * a query with parameters, and the hot path's queries (reservations, ledger batches) all carry
 * them, so the hot path loses no pipelining. It takes the mend (postgres-mend.ts): an unmended
 * postgres.js reserves a transaction's connection only while that connection could pipeline
 * more, which at 0 is never, so every `sql.begin` would fail. Unmended (boot warns), the pool
 * keeps postgres.js's default.
 */
export function poolOptions (max: number): postgres.Options<{}> {
  const options: postgres.Options<{}> & { max_pipeline: number } = {
    max,
    prepare: false,
    max_pipeline: MENDED ? 0 : 100, // read by postgres.js (src/index.js), missing from its types
    connect_timeout: 5,
    idle_timeout: 60,
    backoff: (attempt: number) => Math.min(0.05 * 2 ** attempt, 1),
    onnotice: () => {},
    connection: { application_name: 'usage-proxy' },
  }
  return options
}

/**
 * Opens a pool and waits until Postgres answers, retrying with capped exponential backoff.
 * The default postgres.js reconnect backoff grows to 20 s; a ledger that waits that long after
 * a blip only piles up records, so reconnects are capped at one second here.
 */
export async function connect (opts: ConnectOptions): Promise<Sql> {
  const sql = postgres(opts.url, poolOptions(opts.max ?? 4))
  let attempt = 0
  for (;;) {
    try {
      await sql`select 1`
      await refuseStatementPooling(sql, opts)
      if (attempt > 0) opts.log.info({ attempts: attempt + 1 }, 'postgres reachable')
      return sql
    } catch (err) {
      const fatal = err instanceof StartupError ? err : unfixableByRetry(err, opts.url, opts.variable)
      if (fatal) { await sql.end({ timeout: 0 }).catch(() => {}); throw fatal }
      attempt++
      const wait = Math.min(200 * 2 ** (attempt - 1), opts.retryMaxMs)
      opts.log.warn({ attempt, retryInMs: wait, reason: describe(err), target: redactUrl(opts.url) }, 'postgres unreachable, retrying')
      if (opts.signal?.aborted) { await sql.end({ timeout: 0 }); throw err }
      await sleep(wait, opts.signal)
    }
  }
}

/**
 * A pooler in statement mode (PgBouncer pool_mode = statement) closes the connection at BEGIN:
 * no transaction could work, so neither could the ledger or the budgets. A server that answered
 * `select 1` and then closes at every BEGIN (three tries) is refused at boot, naming the setting.
 */
async function refuseStatementPooling (sql: Sql, opts: ConnectOptions): Promise<void> {
  for (let i = 0; ; i++) {
    try { await sql.begin((tx) => tx`select 1`); return } catch (err) {
      if ((err as { code?: string }).code !== 'CONNECTION_CLOSED' || i === 2) {
        if ((err as { code?: string }).code !== 'CONNECTION_CLOSED') throw err
        await sql.end({ timeout: 0 }).catch(() => {})
        const variable = opts.variable ?? 'DATABASE_URL'
        throw new StartupError(`${variable}: ${redactUrl(opts.url)} answers queries but closes the connection at every BEGIN, as a pooler in statement mode does: ` +
          'no transaction can work there. Use its transaction or session mode (PgBouncer pool_mode = transaction; Supabase port 6543), or a direct connection', variable)
      }
    }
  }
}

/**
 * Wrong credentials (SQLSTATE class 28) or a database that does not exist (3D000) will not fix
 * themselves: fail at once, naming the variable, instead of retrying forever as "unreachable".
 */
export function unfixableByRetry (err: unknown, url: string, variable = 'DATABASE_URL'): StartupError | null {
  const e = err as { code?: string, message?: string }
  const code = typeof e?.code === 'string' ? e.code : ''
  const target = redactUrl(url)
  if (code.startsWith('28')) return new StartupError(`${variable}: Postgres refused the login (${code}: ${e.message}) at ${target}: check the user and password in ${variable}`, variable)
  if (code === '3D000') return new StartupError(`${variable}: ${e.message} (3D000) at ${target}: create the database or fix its name in ${variable}`, variable)
  return null
}

export function describe (err: unknown): string {
  const e = err as { code?: string, message?: string }
  return [e?.code, e?.message].filter(Boolean).join(': ') || String(err)
}

/** postgres://user:secret@host/db -> postgres://user:***@host/db, for log lines. */
export function redactUrl (url: string): string {
  // Everything between the user's colon and the last '@' is the password: one with an '@', '/'
  // or '?' of its own (unencoded) is hidden whole. A password or key passphrase given as a
  // parameter (libpq's ?password=, ?sslpassword=) is hidden too.
  const start = url.indexOf('//') + 2
  const at = url.lastIndexOf('@')
  let shown = url
  if (start >= 2 && at > start) {
    const colon = url.indexOf(':', start)
    if (colon !== -1 && colon < at) shown = `${url.slice(0, colon + 1)}***${url.slice(at)}`
  }
  return shown.replace(/([?&](?:ssl)?password=)[^&#]*/gi, '$1***')
}

function sleep (ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms)
    signal?.addEventListener('abort', () => { clearTimeout(t); resolve() }, { once: true })
  })
}
