import type { Logger } from './log.js'

// postgres.js 3.4.9 can throw from a setImmediate after its socket was closed under it
// (src/connection.js nextWrite: "Cannot read properties of null (reading 'write')") when the TCP
// connection to Postgres is cut mid-query. Nothing can catch that but the process-wide handler;
// the connection is already gone and its queries fail normally, so the ledger's retry covers
// them. Anything else uncaught is a real bug: log it and exit so the orchestrator restarts us
// (the journal keeps every record).

export function isPostgresSocketRace (err: unknown): boolean {
  return err instanceof TypeError && err.message.includes("reading 'write'") &&
    /postgres[/\\]src[/\\]connection\.js/.test(err.stack ?? '')
}

export function installCrashGuard (log: Logger): void {
  process.on('uncaughtException', (err) => {
    if (isPostgresSocketRace(err)) {
      log.warn({ err: err.message }, 'postgres connection dropped mid-write; its queries will be retried')
      return
    }
    log.fatal({ err: err.stack ?? String(err) }, 'uncaught exception; exiting (the journal keeps unwritten records)')
    process.exit(1)
  })
}
