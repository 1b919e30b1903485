// What a bench run needs before it starts: bench/node_modules (Portkey, undici) and dist/.
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { run } from './children.js'
import { BENCH, ROOT } from './targets.js'

export async function ensurePrerequisites (say = (m) => process.stderr.write(`bench: ${m}\n`)) {
  if (!existsSync(join(BENCH, 'node_modules'))) {
    say('bench/node_modules missing: npm ci --prefix bench')
    await run('npm', ['ci', '--prefix', BENCH, '--no-audit', '--no-fund'], { cwd: BENCH })
  }
  if (!existsSync(join(ROOT, 'dist', 'main.js'))) {
    say('dist/main.js missing: npx tsc -p tsconfig.build.json')
    await run('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: ROOT })
  }
}
