// Profiles usage-proxy under the c=64 stream load: the sidecar runs with
// `node --cpu-prof --cpu-prof-dir=DIR dist/main.js`, takes the load, is stopped gracefully (the
// profile is written at exit), and the profile is summarized per function.
//
//   node bench/profile.js   BENCH_PROFILE_SECONDS (10), BENCH_PROFILE_DIR (/tmp/prof),
//                           BENCH_PROFILE_CONCURRENCY (64), BENCH_PROFILE_STREAM (1),
//                           BENCH_PROFILE_TARGET (usage-proxy, or bare-node for the floor),
//                           BENCH_PROFILE_BODY (small, chat500k or image4m)
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stop, stopAll } from './children.js'
import { freshDatabase } from './db.js'
import { runLoad } from './load.js'
import { ensurePrerequisites } from './prereq.js'
import { BENCH, startBareNode, startUpstreamProcess, startUsageProxy } from './targets.js'
import { summarize, summaryMarkdown } from './cpuprofile-summary.js'

const SECONDS = Number(process.env.BENCH_PROFILE_SECONDS || 10)
const DIR = process.env.BENCH_PROFILE_DIR || '/tmp/prof'
const CONCURRENCY = Number(process.env.BENCH_PROFILE_CONCURRENCY || 64)
const STREAM = (process.env.BENCH_PROFILE_STREAM ?? '1') === '1'
const TARGET = process.env.BENCH_PROFILE_TARGET || 'usage-proxy'
const say = (m) => process.stderr.write(`profile: ${m}\n`)

async function main () {
  await ensurePrerequisites()
  mkdirSync(DIR, { recursive: true })
  const tmp = mkdtempSync(join(tmpdir(), 'usage-proxy-profile-'))
  const since = Date.now()
  let load
  try {
    const upstream = await startUpstreamProcess(tmp)
    const nodeArgs = ['--cpu-prof', `--cpu-prof-dir=${DIR}`]
    const sidecar = TARGET === 'bare-node'
      ? await startBareNode({ tmp, upstreamPort: upstream.port, nodeArgs })
      : await startUsageProxy({ tmp, upstreamPort: upstream.port, databaseUrl: await freshDatabase('usage_proxy_profile'), nodeArgs, name: 'usage-proxy-prof' })
    say(`${TARGET}: c=${CONCURRENCY} ${STREAM ? 'stream' : 'non-stream'} load for ${SECONDS} s`)
    load = await runLoad({ url: sidecar.url, headers: sidecar.headers, concurrency: CONCURRENCY, stream: STREAM, seconds: SECONDS, warmupSeconds: 1, body: process.env.BENCH_PROFILE_BODY || 'small' })
    say(`${Math.round(load.rps)} req/s, ${load.errors} errors; stopping ${TARGET} so it writes its profile`)
    await stop(sidecar.child, 30_000)
  } finally {
    await stopAll()
    rmSync(tmp, { recursive: true, force: true })
  }
  const file = readdirSync(DIR).filter((f) => f.endsWith('.cpuprofile')).map((f) => join(DIR, f))
    .filter((f) => statSync(f).mtimeMs >= since).sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0]
  if (!file) throw new Error(`no .cpuprofile written to ${DIR}`)
  const summary = summarize(JSON.parse(readFileSync(file, 'utf8')), 30)
  mkdirSync(join(BENCH, 'results'), { recursive: true })
  const name = `${TARGET}-c${CONCURRENCY}-${STREAM ? 'stream' : 'json'}`
  copyFileSync(file, join(BENCH, 'results', `${name}.cpuprofile`)) // gitignored; open in Chrome DevTools
  const md = `${TARGET} under c=${CONCURRENCY} ${STREAM ? 'stream' : 'non-stream'}, ${Math.round(load.rps)} req/s for ${SECONDS} s; profile ${file}\n\n` + summaryMarkdown(summary)
  writeFileSync(join(BENCH, 'results', `${name}.profile.json`), JSON.stringify({ target: TARGET, file, rps: load.rps, seconds: SECONDS, concurrency: CONCURRENCY, stream: STREAM, ...summary }, null, 2) + '\n')
  writeFileSync(join(BENCH, 'results', `${name}.profile.md`), md)
  process.stdout.write(md)
}

main().catch(async (err) => {
  say(`failed: ${err.stack ?? err}`)
  await stopAll()
  process.exit(1)
})
