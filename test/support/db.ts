import postgres from 'postgres'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { servePglite } from '../../src/db/pglite-server.js'
import { migrate } from '../../src/db/migrate.js'

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

export interface TestDbOptions {
  /**
   * Starts from the schema `migrate(sql, 'sql')` makes, copied from a template migrated once per
   * version of sql/ (CREATE DATABASE ... TEMPLATE on a server, a saved data directory embedded)
   * instead of migrating in every file. For files whose tests are not about migrating: the
   * sidecar's boot and a test's own `migrate` then find every migration applied and re-apply the
   * functions, as at any restart. Without it the database is empty.
   */
  migrated?: boolean
}

export async function createTestDb (opts: TestDbOptions = {}): Promise<TestDb> {
  return (await realServerAvailable()) ? createOnServer(opts) : createEmbedded(opts)
}

async function createOnServer (opts: TestDbOptions): Promise<TestDb> {
  const name = `usage_proxy_test_${randomBytes(6).toString('hex')}`
  const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {} })
  if (opts.migrated === true) {
    // Another checkout's run may have just dropped a template of the day's sql/ as stale: make it again.
    await admin.unsafe(`create database ${name} template ${await serverTemplate(admin)}`)
      .catch(async (err) => { if (err.code !== '3D000') throw err; await admin.unsafe(`create database ${name} template ${await serverTemplate(admin)}`) })
  } else {
    await admin.unsafe(`create database ${name}`)
  }
  const u = new URL(ADMIN_URL)
  u.pathname = `/${name}`
  const sql = postgres(u.toString(), { max: 2, onnotice: () => {} })
  return {
    url: u.toString(), name, port: Number(u.port || 5432), embedded: false, sql,
    async drop () {
      await sql.end({ timeout: 1 })
      // Not awaited: DROP DATABASE can take a while on a busy disk and no test is about it; the
      // process lives until it is done, while the file's other tests go on. (A process of its own
      // per database cost more: tap's process tracking and coverage start in each one.) A database
      // left by a run that was killed stays, as before.
      void admin.unsafe(`drop database if exists ${name} with (force)`).catch(() => {}).finally(() => admin.end({ timeout: 1 }))
    },
  }
}

async function createEmbedded (opts: TestDbOptions): Promise<TestDb> {
  const { PGlite } = await import('@electric-sql/pglite')
  const db = await PGlite.create({ loadDataDir: opts.migrated === true ? await migratedDataDir() : await blankDataDir() })
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
 * A digest of sql/ (migrations and functions) and of the day: a template is made once for each
 * version of sql/ each day, since migrating makes the partitions of the months around its day.
 */
async function schemaDigest (): Promise<string> {
  const hash = createHash('sha256').update(new Date().toISOString().slice(0, 10))
  for (const dir of [SQL_DIR, join(SQL_DIR, 'functions')]) {
    for (const name of (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort()) {
      hash.update(`${dir}/${name}\0`).update(await readFile(join(dir, name)))
    }
  }
  return hash.digest('hex').slice(0, 16)
}

const SQL_DIR = join(ROOT, 'sql')
const TEMPLATE_LOCK = 727_361_099
const TEMPLATE_PREFIX = 'usage_proxy_template_'

/**
 * The name of a database on the server migrated with this checkout's sql/, made by the first file
 * that asks (the others wait on an advisory lock, then find it). It is built under another name
 * and renamed when complete, so no file copies half a schema. Templates of other sql/ versions or
 * days (other checkouts share the server) are dropped an hour after they were made.
 */
async function serverTemplate (admin: postgres.Sql<{}>): Promise<string> {
  const name = `${TEMPLATE_PREFIX}${await schemaDigest()}`
  const [found] = await admin`select 1 from pg_database where datname = ${name}`
  if (found !== undefined) return name
  await admin`select pg_advisory_lock(${TEMPLATE_LOCK})`
  try {
    const [made] = await admin`select 1 from pg_database where datname = ${name}`
    if (made !== undefined) return name
    const building = `${TEMPLATE_PREFIX}building_${randomBytes(6).toString('hex')}`
    await admin.unsafe(`create database ${building}`)
    const u = new URL(ADMIN_URL)
    u.pathname = `/${building}`
    const sql = postgres(u.toString(), { max: 1, onnotice: () => {} })
    try {
      await migrate(sql, SQL_DIR)
    } finally {
      await sql.end({ timeout: 1 })
    }
    await admin.unsafe(`alter database ${building} rename to ${name}`)
    await admin.unsafe(`comment on database ${name} is 'usage-proxy test template, made ${new Date().toISOString()}'`)
    const stale = await admin<{ datname: string }[]>`
      select d.datname from pg_database d left join pg_shdescription s on s.objoid = d.oid and s.classoid = 'pg_database'::regclass
      where d.datname like ${TEMPLATE_PREFIX + '%'} and d.datname <> ${name}
        and coalesce(substring(s.description from 'made (.*)$')::timestamptz, '-infinity') < now() - interval '1 hour'`
    for (const { datname } of stale) await admin.unsafe(`drop database if exists ${datname}`).catch(() => {})
    return name
  } finally {
    await admin`select pg_advisory_unlock(${TEMPLATE_LOCK})`
  }
}

/**
 * The embedded counterpart of serverTemplate: a data directory with sql/ migrated, saved under
 * .tap/ for this PGlite version and sql/ digest, made from the blank one by the first file that
 * asks (written aside and renamed, as blankDataDir).
 */
export async function migratedDataDir (): Promise<Blob> {
  const manifest = join(ROOT, 'node_modules', '@electric-sql', 'pglite', 'package.json')
  const { version } = JSON.parse(await readFile(manifest, 'utf8')) as { version: string }
  const file = join(ROOT, '.tap', 'pglite', `migrated-${version}-${await schemaDigest()}.tar`)
  try {
    return new Blob([await readFile(file)])
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const { PGlite } = await import('@electric-sql/pglite')
  const db = await PGlite.create({ loadDataDir: await blankDataDir() })
  const server = await servePglite(db, '127.0.0.1', 0)
  const sql = postgres(`postgres://postgres@127.0.0.1:${server.port}/postgres`, { max: 1, onnotice: () => {} })
  try {
    await migrate(sql, SQL_DIR)
  } finally {
    await sql.end({ timeout: 1 })
    await server.stop()
  }
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
