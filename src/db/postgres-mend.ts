import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

// scripts/patch-postgres.mjs mends postgres.js at install (npm's postinstall, the Dockerfile's
// own step). An install made with --ignore-scripts skips it, and then a connection Postgres cuts
// mid-write can stay dead until the process restarts: boot says so rather than leave it silent.

export const MARK = '/* usage-proxy: porsager/postgres#1208 */'

/** True when the postgres.js this process loads carries the mend. */
export function postgresMended (): boolean {
  try {
    const file = join(dirname(fileURLToPath(import.meta.resolve('postgres'))), 'connection.js')
    return readFileSync(file, 'utf8').includes(MARK)
  } catch {
    return false
  }
}
