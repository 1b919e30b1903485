// System calls per request (strace -c on the target's process) for each target, at one
// concurrency, stream or not: what a change to the writes of the hot path saves, in counts, which
// a noisy machine does not blur. Needs strace (apt-get install strace).
//   STREAM=1 C=64 node bench/syscalls.js floor,usage-proxy      (BENCH_BEFORE_DIR for usage-proxy-before)
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { stopAll } from './children.js'
import { freshDatabase } from './db.js'
import { runLoad } from './load.js'
import { startTargets, startUpstreamProcess } from './targets.js'
const tmp = mkdtempSync(join(tmpdir(), 'sc-'))
const db = await freshDatabase('usage_proxy_sc')
const up = await startUpstreamProcess(tmp)
const targets = await startTargets({ tmp, upstreamPort: up.port, databaseUrl: db, names: process.argv[2].split(',') })
const c = Number(process.env.C ?? 64)
for (const t of targets) {
  await runLoad({ url: t.url, headers: t.headers, concurrency: c, stream: process.env.STREAM === '1', seconds: 2, warmupSeconds: 1 })
  const st = spawn('strace', ['-c', '-f', '-o', join(tmp, `${t.name}-${c}.txt`), '-p', String(t.pid)])
  await new Promise((r) => setTimeout(r, 500))
  const l = await runLoad({ url: t.url, headers: t.headers, concurrency: c, stream: process.env.STREAM === '1', seconds: 3, warmupSeconds: 0 })
  st.kill('SIGINT'); await new Promise((r) => st.on('exit', r))
  const txt = readFileSync(join(tmp, `${t.name}-${c}.txt`), 'utf8')
  const per = (name) => { const line = txt.split('\n').find((x) => x.trim().split(/\s+/).at(-1) === name); return line ? (Number(line.trim().split(/\s+/)[3]) / l.requests).toFixed(2) : '0' }
  console.log(`${t.name} c=${c} stream=${process.env.STREAM === '1'}: ${l.requests} requests; per request read ${per('read')} writev ${per('writev')} write ${per('write')}`)
}
await stopAll()
process.exit(0)
