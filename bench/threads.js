// CPU per thread of usage-proxy (or bare Node) under one load: what the main-thread profile
// cannot see (GC helpers, the libuv pool, the kernel on their behalf).
//   node bench/threads.js [--target=usage-proxy|bare-node] [--c=8] [--s=6] [--body=image4m] [--node=--trace-gc]
// (--node: flags for the target's node, its output in the log named at the end)
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stopAll } from './children.js'
import { freshDatabase } from './db.js'
import { runLoad } from './load.js'
import { startBareNode, startUpstreamProcess, startUsageProxy } from './targets.js'

const arg = (n, d) => { const a = process.argv.find((x) => x.startsWith(`--${n}=`)); return a ? a.slice(n.length + 3) : d }
const threads = (pid) => Object.fromEntries(readdirSync(`/proc/${pid}/task`).map((t) => {
  const [comm, rest] = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8').split(') ')
  const f = rest.split(' ')
  return [t, { name: comm.split(' (')[1], user: Number(f[11]) * 10, sys: Number(f[12]) * 10 }]
}))
const tmp = mkdtempSync(join(tmpdir(), 'threads-'))
try {
  const up = await startUpstreamProcess(tmp)
  const nodeArgs = arg('node', '').split(' ').filter(Boolean)
  const target = arg('target', 'usage-proxy') === 'bare-node'
    ? await startBareNode({ tmp, upstreamPort: up.port, nodeArgs })
    : await startUsageProxy({ tmp, upstreamPort: up.port, nodeArgs, databaseUrl: await freshDatabase('usage_proxy_threads') })
  const load = { url: target.url, headers: target.headers ?? {}, concurrency: Number(arg('c', '8')), stream: false, body: arg('body', 'image4m') }
  await runLoad({ ...load, seconds: 2, warmupSeconds: 0 })
  const before = threads(target.pid)
  const l = await runLoad({ ...load, seconds: Number(arg('s', '6')), warmupSeconds: 0 })
  const after = threads(target.pid)
  const n = l.requests
  console.log(`${arg('target', 'usage-proxy')}: ${Math.round(l.rps)} req/s; CPU ms per request by thread`)
  for (const [tid, a] of Object.entries(after)) {
    const b = before[tid] ?? { user: 0, sys: 0 }
    const u = (a.user - b.user) / n; const s = (a.sys - b.sys) / n
    if (u + s > 0.005) console.log(`  ${tid.padStart(7)} ${a.name.padEnd(16)} user ${u.toFixed(3)}  sys ${s.toFixed(3)}`)
  }
  if (nodeArgs.length > 0) console.log(`target's output: ${tmp}`)
} finally { await stopAll() }
