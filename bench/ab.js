// A/B of direct, bare Node and usage-proxy on one scenario, with the CPU of every postgres process
//   node bench/ab.js --c=64 --s=4 --reps=2 [--stream=1] [--whole=1] [--body=chat500k|image4m]   QUICK_ENV='{"LEDGER_FLUSH_MS":"50"}' for the sidecar
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stopAll } from './children.js'
import { freshDatabase } from './db.js'
import { runLoad } from './load.js'
import { startBareNode, startUpstreamProcess, startUsageProxy } from './targets.js'
import { readFileSync } from 'node:fs'
const arg = (n, d) => { const a = process.argv.find((x) => x.startsWith(`--${n}=`)); return a ? a.slice(n.length + 3) : d }
const c = Number(arg('c', '1')); const secs = Number(arg('s', '3')); const stream = arg('stream', '0') === '1'; const whole = arg('whole', '0') === '1'; const reps = Number(arg('reps', '2'))
const cpu = (pid) => { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) * 10 }
const sys = (pid) => Number(readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")[12]) * 10
import { readdirSync } from 'node:fs'
const pgCpu = () => { let t = 0; for (const d of readdirSync('/proc')) { if (!/^\d+$/.test(d)) continue; try { const st = readFileSync(`/proc/${d}/stat`, 'utf8'); if (!st.includes('(postgres)')) continue; const f = st.split(') ')[1].split(' '); t += (Number(f[11]) + Number(f[12])) * 10 } catch {} } return t }
const tmp = mkdtempSync(join(tmpdir(), "ab-"))
try {
  const up = await startUpstreamProcess(tmp)
  const targets = [{ name: 'direct', url: `http://127.0.0.1:${up.port}/api/v1/chat/completions`, headers: {} }, await startBareNode({ tmp, upstreamPort: up.port }), await startUsageProxy({ tmp, upstreamPort: up.port, databaseUrl: await freshDatabase('usage_proxy_ab'), extraEnv: JSON.parse(process.env.QUICK_ENV ?? '{}') })]
  for (let r = 0; r < reps; r++) for (const t of targets) {
    const headers = { ...(t.headers ?? {}), ...(whole ? { 'x-bench-write': 'whole' } : {}) }
    const c0 = t.pid ? cpu(t.pid) : 0; const s0 = t.pid ? sys(t.pid) : 0; const p0 = pgCpu()
    const l = await runLoad({ url: t.url, headers, concurrency: c, stream, seconds: secs, warmupSeconds: 1, body: arg('body', 'small') })
    const used = t.pid ? cpu(t.pid) - c0 : 0; const usedSys = t.pid ? sys(t.pid) - s0 : 0; const pg = pgCpu() - p0
    const s = l.latencies.sort((a, b) => a - b)
    console.log(`${t.name.padEnd(12)} ${Math.round(l.rps)} req/s p50 ${s[Math.floor(s.length / 2)].toFixed(3)} ms err ${l.errors} cpu/req ${(used / (l.requests + 1)).toFixed(3)} ms (sys ${(usedSys / (l.requests + 1)).toFixed(3)}) postgres ${(pg / (l.seconds * 10)).toFixed(0)}% of a core`)
  }
} finally { await stopAll() }
