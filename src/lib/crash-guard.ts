import type { Logger } from './log.js'

// postgres.js 3.4.9 can throw from a setImmediate after its socket was closed under it
// (src/connection.js nextWrite: "Cannot read properties of null (reading 'write')") when the TCP
// connection to Postgres is cut mid-query. scripts/patch-postgres.mjs mends that at install, so
// the write settles its queries instead; an install without the mend (--ignore-scripts, boot warns)
// still must not die of it, and nothing can catch it but the process-wide handler. Its queries
// fail normally, so the ledger's retry covers them. Anything else uncaught is a real bug: log it
// and exit so the orchestrator restarts us (the journal keeps every record).
//
// postgres.js 3.4.9 also fetches the array types on every new connection (src/connection.js
// fetchArrayTypes) from a socket handler that drops the promise: a connection reset while that
// query runs rejects it with the bare socket error (its query has no origin to add), and nobody
// awaits it. Node makes that an uncaught exception. That connection is gone too and the pool
// reconnects, so an unawaited rejection carrying only a bare socket error (reset, refused, timed out) is survived.

const SOCKET_ERRORS = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED'])
const SOCKET_CALLS = new Set(['read', 'write', 'connect'])

export function isPostgresSocketRace (err: unknown): boolean {
  return err instanceof TypeError && err.message.includes("reading 'write'") &&
    /postgres[/\\]src[/\\]connection\.js/.test(err.stack ?? '')
}

/** A rejection nobody awaited whose reason is a bare socket error: no frame but Node's own. */
export function isDroppedSocketRejection (err: unknown, origin: string): boolean {
  if (origin !== 'unhandledRejection' || !(err instanceof Error)) return false
  const e = err as NodeJS.ErrnoException
  if (!SOCKET_ERRORS.has(e.code ?? '') || !SOCKET_CALLS.has(e.syscall ?? '')) return false
  const frames = (e.stack ?? '').split('\n').slice(1)
  return frames.length > 0 && frames.every((f) => /^\s+at .*\(node:/.test(f))
}

export function installCrashGuard (log: Logger): void {
  process.on('uncaughtException', (err, origin) => {
    if (isPostgresSocketRace(err)) {
      log.warn({ err: err.message }, 'postgres connection dropped mid-write; its queries will be retried')
      return
    }
    if (isDroppedSocketRejection(err, origin)) {
      log.warn({ err: err.message }, 'postgres connection reset while it was being set up; the pool reconnects')
      return
    }
    log.fatal({ err: err.stack ?? String(err) }, 'uncaught exception; exiting (the journal keeps unwritten records)')
    process.exit(1)
  })
}
