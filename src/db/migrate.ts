import { readdir, readFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import type { Sql } from './connect.js'

// One constant for every sidecar: whichever boots first migrates, the others wait on the lock
// and then find nothing left to do.
const MIGRATION_LOCK = 727_361_001

export interface MigrationResult { applied: string[], skipped: string[], functions: string[] }

/**
 * Applies sql/NNN_*.sql in order, each exactly once, then every sql/functions/*.sql in name order
 * (the current definitions of functions and triggers, CREATE OR REPLACE: re-applied at every boot,
 * not checksummed; the numbered files stay the history), all in one transaction under an
 * advisory lock.
 */
export async function migrate (sql: Sql, dir: string): Promise<MigrationResult> {
  const files = (await readdir(dir)).filter((f) => /^\d+_.*\.sql$/.test(f)).sort()
  const scripts = await Promise.all(files.map(async (name) => ({ name, text: await readFile(join(dir, name), 'utf8') })))
  const functions = await readFunctions(join(dir, 'functions'))
  return sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(${MIGRATION_LOCK})`
    await tx`create table if not exists schema_migrations (
      name text primary key, checksum text not null, applied_at timestamptz not null default now())`
    const done = new Map((await tx<{ name: string, checksum: string }[]>`select name, checksum from schema_migrations`)
      .map((r) => [r.name, r.checksum]))
    const result: MigrationResult = { applied: [], skipped: [], functions: [] }
    for (const { name, text } of scripts) {
      const checksum = createHash('sha256').update(text).digest('hex')
      const previous = done.get(name)
      if (previous !== undefined) {
        // An edited migration would silently diverge between databases: refuse instead.
        if (previous !== checksum) throw new Error(`migration ${name} changed after it was applied (checksum mismatch); add a new migration instead`)
        result.skipped.push(name)
        continue
      }
      await tx.unsafe(text)
      await tx`insert into schema_migrations (name, checksum) values (${name}, ${checksum})`
      result.applied.push(name)
    }
    for (const { name, text } of functions) {
      await tx.unsafe(text)
      result.functions.push(name)
    }
    return result
  }) as Promise<MigrationResult>
}

async function readFunctions (dir: string): Promise<Array<{ name: string, text: string }>> {
  let names: string[]
  try {
    names = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  return Promise.all(names.map(async (name) => ({ name, text: await readFile(join(dir, name), 'utf8') })))
}
