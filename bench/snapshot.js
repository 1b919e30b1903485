// Builds a commit of the project apart from the work tree, so a bench measures exactly that
// commit while src/ and dist/ keep changing under concurrent work:
//
//   BENCH_PROJECT_DIR=$(node bench/snapshot.js HEAD) npm run bench
//
// Extracts src/, sql/, package.json and the tsconfigs of REF (default HEAD) into
// $TMPDIR/usage-proxy-snapshot-<sha>, links the work tree's node_modules, compiles to dist/,
// records the commit in COMMIT and prints the directory.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const WORK = new URL('..', import.meta.url).pathname.replace(/\/$/, '')
const ref = process.argv[2] ?? 'HEAD'
const sha = execFileSync('git', ['rev-parse', '--verify', `${ref}^{commit}`], { cwd: WORK, encoding: 'utf8' }).trim()
const dir = join(tmpdir(), `usage-proxy-snapshot-${sha.slice(0, 12)}`)
if (!existsSync(join(dir, 'dist', 'main.js'))) {
  mkdirSync(dir, { recursive: true })
  const tar = execFileSync('git', ['archive', sha, 'src', 'sql', 'package.json', 'tsconfig.json', 'tsconfig.build.json'], { cwd: WORK, maxBuffer: 1 << 28 })
  execFileSync('tar', ['-x', '-C', dir], { input: tar })
  if (!existsSync(join(dir, 'node_modules'))) symlinkSync(join(WORK, 'node_modules'), join(dir, 'node_modules'))
  execFileSync(join(WORK, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.build.json'], { cwd: dir, stdio: ['ignore', 'inherit', 'inherit'] })
  writeFileSync(join(dir, 'COMMIT'), sha + '\n')
}
process.stdout.write(dir + '\n')
