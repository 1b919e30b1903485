import { readdir, readFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import type { Sql } from './connect.js'

// One constant for every sidecar: whichever boots first migrates, the others wait on the lock
// and then find nothing left to do.
const MIGRATION_LOCK = 727_361_001

// A migration is checksummed on its statements, its comment lines left out, so that rewording a
// comment is not an edit. Databases migrated before carry the checksum of the whole text: it is
// accepted for the text as it was then (EARLIER_WORDING holds those of reworded files).
const STATEMENTS = 'v2:'
const EARLIER_WORDING: Record<string, string> = {
  '005_full_usage_and_kind_views.sql': '51735a19624681c0d6203984b312914af1181b0cd2c17c7a1bcafd25accd24c6',
  '006_budgets.sql': '04507beecb5f2becb0ea4bceccc726aa8b823970addd41cdf66d72f082903943',
}

function sha256 (text: string): string { return createHash('sha256').update(text).digest('hex') }

/** The checksum a migration is recorded under: its text without comment lines. */
export function statementsChecksum (text: string): string {
  return STATEMENTS + sha256(text.split('\n').filter((line) => !line.trimStart().startsWith('--')).join('\n'))
}

function sameMigration (name: string, text: string, recorded: string): boolean {
  return recorded === statementsChecksum(text) || recorded === sha256(text) || recorded === EARLIER_WORDING[name]
}

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
      const checksum = statementsChecksum(text)
      const previous = done.get(name)
      if (previous !== undefined) {
        // An edited migration would silently diverge between databases: refuse instead.
        if (!sameMigration(name, text, previous)) throw new Error(`migration ${name} changed after it was applied (checksum mismatch); add a new migration instead`)
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
