import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

// scripts/patch-postgres.mjs mends postgres.js at install (npm's postinstall, the Dockerfile's
// own step). An install made with --ignore-scripts skips it, and then a connection Postgres cuts
// mid-write can stay dead until the process restarts: boot says so rather than leave it silent.
// So does an install mended by an older script, without the later edits (a BEGIN that fills its
// connection's pipeline leaving the pool's next queries inside its transaction, one of them).

export const MARK = '/* usage-proxy: porsager/postgres#1208 */'
/** How many edits the script makes in connection.js, each carrying the mark once. */
export const EDITS = 8
/** And in index.js (transactions and reserved connections that outlive their connection). */
export const INDEX_EDITS = 5

/** True when the postgres.js this process loads carries the whole mend. */
export function postgresMended (): boolean {
  try {
    const dir = dirname(fileURLToPath(import.meta.resolve('postgres')))
    const marks = (name: string): number => readFileSync(join(dir, name), 'utf8').split(MARK).length - 1
    return marks('connection.js') >= EDITS && marks('index.js') >= INDEX_EDITS
  } catch {
    return false
  }
}
