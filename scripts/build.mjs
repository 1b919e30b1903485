// Builds dist/ (`npm run build`, `npm test`, the tests that spawn it): tsc -p tsconfig.build.json,
// incremental (its state in dist/.tsbuildinfo), then marks the build current as of now. tsc leaves dist/ untouched when no
// source changed, even if their times did (a checkout): the mark is what tells a test file that
// dist/ is current, so it does not build again (isBuilt in child.ts).
import { spawnSync } from 'node:child_process'
import { existsSync, utimesSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
export const BUILD_MARK = join(ROOT, 'dist', '.tsbuildinfo')

/** Builds; throws with tsc's output when it fails. */
export function build () {
  const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8' })
  if (tsc.status !== 0) throw new Error(`build failed:\n${tsc.stdout}${tsc.stderr}`)
  if (existsSync(BUILD_MARK)) { const now = new Date(); utimesSync(BUILD_MARK, now, now) }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try { build() } catch (err) { console.error(err.message); process.exit(1) }
}
