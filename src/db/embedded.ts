import { mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import type { Logger } from '../lib/log.js'
import { StartupError } from '../lib/startup-error.js'
import { servePglite, type PgliteServer } from './pglite-server.js'

// Zero-setup default: without DATABASE_URL the sidecar runs PGlite (Postgres compiled to WASM)
// with its data under DATA_DIR, served on a loopback port so the same postgres.js client, the
// same migrations and psql all work against it. PGlite is an optional dependency, imported only
// here: a sidecar with a real database never loads the WASM module, and an install or image
// without it (npm ci --omit=optional) still runs against DATABASE_URL.

export interface EmbeddedDb { url: string, psql: string, dataDir: string, stop: () => Promise<void> }

export type PgliteClass = typeof import('@electric-sql/pglite').PGlite

export async function importPglite (): Promise<PgliteClass> {
  return (await import('@electric-sql/pglite')).PGlite
}

export const PGLITE_MISSING = 'DATABASE_URL: not set, and the embedded database (PGlite) is not installed: set DATABASE_URL to a PostgreSQL server, ' +
  'or install the embedded one with `npm install @electric-sql/pglite` (in the Docker image: build it with --build-arg EMBEDDED=1)'

/** The optional package, or a start-up error that says how to get it when it is not installed. */
export async function loadPglite (load: () => Promise<PgliteClass> = importPglite): Promise<PgliteClass> {
  try {
    return await load()
  } catch (err) {
    const code = (err as { code?: string }).code
    if (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') throw new StartupError(PGLITE_MISSING, 'DATABASE_URL')
    throw err
  }
}

export async function startEmbedded (dataDir: string, port: number, log: Logger, load?: () => Promise<PgliteClass>): Promise<EmbeddedDb> {
  const started = Date.now()
  const PGlite = await loadPglite(load)
  const dir = resolve(join(dataDir, 'pglite'))
  mkdirSync(dir, { recursive: true })
  const db = await PGlite.create(dir)
  // Several connections take turns on the one session, exchange by exchange, so an operator's
  // psql can look while the sidecar writes.
  let server: PgliteServer
  try {
    server = await servePglite(db, '127.0.0.1', port)
  } catch (err) {
    await db.close().catch(() => {})
    if ((err as { code?: string }).code === 'EADDRINUSE') {
      throw new StartupError(`EMBEDDED_DB_PORT: port ${port} on 127.0.0.1 is already in use (EADDRINUSE), needed by the embedded database: ` +
        'set EMBEDDED_DB_PORT to a free port, or DATABASE_URL to use a PostgreSQL server instead', 'EMBEDDED_DB_PORT')
    }
    throw err
  }
  const actual = server.port
  const url = `postgres://postgres@127.0.0.1:${actual}/postgres`
  log.info({ dataDir: dir, ms: Date.now() - started }, 'embedded postgres (PGlite) started')
  return {
    url,
    dataDir: dir,
    psql: `psql "postgresql://postgres@127.0.0.1:${actual}/postgres?sslmode=disable"`,
    async stop () { await server.stop(); await db.close() },
  }
}
