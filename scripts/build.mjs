// Builds dist/ (`npm run build`, `npm test`, the tests that spawn it): tsc -p tsconfig.build.json,
// incremental (its state in dist/.tsbuildinfo), then marks the build current as of now. tsc leaves dist/ untouched when no
// source changed, even if their times did (a checkout): the mark is what tells `npm test` and a
// test file that dist/ is current (`isCurrent`), so they do not start tsc again (4 s of CPU here
// for a build with nothing to do). `--if-stale` builds only when it is not.
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, statSync, utimesSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
export const BUILD_MARK = join(ROOT, 'dist', '.tsbuildinfo')

function newestMtime (path) {
  const st = statSync(path)
  if (!st.isDirectory()) return st.mtimeMs
  return Math.max(0, ...readdirSync(path).map((name) => newestMtime(join(path, name))))
}

/** dist/ was built after the last change to src/ and to what configures the build. */
export function isCurrent () {
  if (!['main.js', 'cli.js', '.tsbuildinfo'].every((f) => existsSync(join(ROOT, 'dist', f)))) return false
  const inputs = ['src', 'tsconfig.json', 'tsconfig.build.json', 'package.json'].map((f) => join(ROOT, f))
  return statSync(BUILD_MARK).mtimeMs >= Math.max(...inputs.map(newestMtime))
}

/** Builds; throws with tsc's output when it fails. */
export function build () {
  const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8' })
  if (tsc.status !== 0) throw new Error(`build failed:\n${tsc.stdout}${tsc.stderr}`)
  if (existsSync(BUILD_MARK)) { const now = new Date(); utimesSync(BUILD_MARK, now, now) }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try { if (!process.argv.includes('--if-stale') || !isCurrent()) build() } catch (err) { console.error(err.message); process.exit(1) }
}
