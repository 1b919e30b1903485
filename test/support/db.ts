import postgres from 'postgres'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { servePglite } from '../../src/db/pglite-server.js'

// Each test file gets a database of its own, created here and dropped at the end: files run in
// parallel and never see each other's rows. The real server (TEST_DATABASE_URL, or the one on
// 127.0.0.1:5432) is used when it answers; on a laptop without Postgres each database is an
// in-memory embedded Postgres (PGlite) served on a loopback port instead, so `npm test` passes
// there too (src/db/pglite-server.ts gives each client the session for a whole exchange). CI runs
// the suite both ways.

export const ADMIN_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

export interface TestDb {
  url: string, name: string, port: number, embedded: boolean, sql: postgres.Sql<{}>, drop: () => Promise<void>
  /**
   * Embedded only: how many clients wait for the one session (a statement sent while another
   * client's transaction holds it), where a server would show a backend waiting on a lock.
   */
  queued?: () => number
}

let realServer: Promise<boolean> | null = null

export function realServerAvailable (): Promise<boolean> {
  realServer ??= (async () => {
    const probe = postgres(ADMIN_URL, { max: 1, connect_timeout: 2, onnotice: () => {} })
    try { await probe`select 1`; return true } catch { return false } finally { await probe.end({ timeout: 0 }).catch(() => {}) }
  })()
  return realServer
}

export async function createTestDb (): Promise<TestDb> {
  return (await realServerAvailable()) ? createOnServer() : createEmbedded()
}

async function createOnServer (): Promise<TestDb> {
  const name = `usage_proxy_test_${randomBytes(6).toString('hex')}`
  const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`create database ${name}`)
  const u = new URL(ADMIN_URL)
  u.pathname = `/${name}`
  const sql = postgres(u.toString(), { max: 2, onnotice: () => {} })
  return {
    url: u.toString(), name, port: Number(u.port || 5432), embedded: false, sql,
    async drop () {
      await sql.end({ timeout: 1 })
      await admin.unsafe(`drop database if exists ${name} with (force)`)
      await admin.end({ timeout: 1 })
    },
  }
}

async function createEmbedded (): Promise<TestDb> {
  const { PGlite } = await import('@electric-sql/pglite')
  const db = await PGlite.create({ loadDataDir: await blankDataDir() })
  const server = await servePglite(db, '127.0.0.1', 0)
  const url = `postgres://postgres@127.0.0.1:${server.port}/postgres`
  const sql = postgres(url, { max: 2, onnotice: () => {} })
  return {
    url, name: 'postgres', port: server.port, embedded: true, sql, queued: server.waiting,
    async drop () {
      await sql.end({ timeout: 1 })
      await server.stop()
      await db.close()
    },
  }
}

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')

/**
 * A freshly initialised, empty PGlite data directory (a tar), made once per PGlite version and
 * kept under .tap/: PGlite's initdb takes seconds of WASM work in every test file, loading its
 * result takes a fraction of that, and the database is the same empty one either way. Two files
 * starting at once may both make it; each writes its own temporary file and renames it, so a
 * reader never sees half of one.
 */
export async function blankDataDir (): Promise<Blob> {
  const manifest = join(ROOT, 'node_modules', '@electric-sql', 'pglite', 'package.json')
  const { version } = JSON.parse(await readFile(manifest, 'utf8')) as { version: string }
  const file = join(ROOT, '.tap', 'pglite', `blank-${version}.tar`)
  try {
    return new Blob([await readFile(file)])
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const { PGlite } = await import('@electric-sql/pglite')
  const db = await PGlite.create()
  const tar = await db.dumpDataDir('none')
  await db.close()
  await mkdir(dirname(file), { recursive: true })
  const temp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`
  await writeFile(temp, new Uint8Array(await tar.arrayBuffer()))
  await rename(temp, file)
  return tar
}

/**
 * For a test that needs a PostgreSQL server, not the embedded fallback: one about concurrent
 * backends (locks, pg_stat_activity, cancelling a running query), which a single PGlite session
 * cannot have. Without a server it ends the test as skipped, saying why, and returns true; where a
 * server answers (CI's run with one) it returns false and the test runs.
 */
export async function withoutServer (t: { plan: (n: number, why: string) => void }, why: string): Promise<boolean> {
  if (await realServerAvailable()) return false
  t.plan(0, `needs a PostgreSQL server (none answers on 127.0.0.1:5432): ${why}`)
  return true
}

/** Polls a query until it returns rows (the ledger writes off the request path), or times out empty. */
export async function rowsSoon<T> (read: () => Promise<T[]>, timeoutMs = 7500): Promise<T[]> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const rows = await read()
    if (rows.length > 0 || Date.now() > deadline) return rows
    await new Promise((r) => setTimeout(r, 25))
  }
}
