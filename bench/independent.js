// The second harness, beside bench/run.js: large bodies measured with a load generator and an
// upstream of another construction (bench/string-load.js: undici Pool.request with a string body;
// bench/parsing-upstream.js: JSON.parses every body), direct vs bare Node vs usage-proxy in
// alternating reps, warm-up excluded. Per process over the measured window: CPU from
// /proc/PID/stat (every thread: GC helpers included), and for the Node targets their GC regime
// (bench/gc-probe.js, preloaded into both proxies alike). Each factor can be switched to the
// first harness's, to find which one makes the two disagree.
//
//   node bench/independent.js [--bodies=chat500k,image4m] [--c=1,8] [--reps=3] [--s=3] [--warmup=1]
//        [--max-body=default,8,64]   one usage-proxy per MAX_BODY_BYTES setting (MB), all measured
//        [--client=string|buffer]    string: Pool.request + string body (default); buffer: bench/load.js
//        [--upstream=parsing|fake]   parsing: bench/parsing-upstream.js (default); fake: bench/upstream.js
//        [--shape=ascii|bench]       ascii: string-load.js's bodies (default); bench: bench/load.js's
//        [--bare-headroom=1|0]       1: also a bare Node with usage-proxy's GC headroom preloaded (the same GC regime)
//        [--env='{"K":"V"}']         more environment for usage-proxy; [--node='--flag'] node flags for both proxies
//        [--out=bench/results/independent-latest.json]
import { mkdtempSync, readFileSync, writeFileSync, existsSync, mkdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { start, stopAll, freePort, waitHttp } from './children.js'
import { freshDatabase } from './db.js'
import { runLoad, requestBody } from './load.js'
import { runStringLoad, stringBody } from './string-load.js'
import { cpuSeconds } from './procstat.js'
import { summarize } from './stats.js'
import { BENCH, ROOT, CLIENT_HEADERS, startBareNode, startUsageProxy } from './targets.js'

const arg = (n, d) => { const a = process.argv.find((x) => x.startsWith(`--${n}=`)); return a ? a.slice(n.length + 3) : d }
const list = (s) => s.split(',').map((x) => x.trim()).filter(Boolean)
const BODIES = list(arg('bodies', 'chat500k,image4m'))
const CONC = list(arg('c', '1,8')).map(Number)
const REPS = Number(arg('reps', '3'))
const SECONDS = Number(arg('s', '3'))
const WARMUP = Number(arg('warmup', '1'))
const MAX_BODY = list(arg('max-body', 'default,64'))
const CLIENT = arg('client', 'string')
const UPSTREAM = arg('upstream', 'parsing')
const SHAPE = arg('shape', 'ascii')
const EXTRA_ENV = JSON.parse(arg('env', '{}'))
const NODE = arg('node', '').split(' ').filter(Boolean)
const BARE_HEADROOM = arg('bare-headroom', '1') === '1'
const OUT = arg('out', join(BENCH, 'results', 'independent-latest.json'))
const PROBE = ['--import', join(BENCH, 'gc-probe.js')]
const say = (m) => process.stderr.write(`independent: ${m}\n`)

/** The GC probe's counters of a Node process, read on demand (SIGUSR2). */
async function gcState (pid) {
  const file = join(tmpdir(), `gc-probe-${pid}.json`)
  const seq = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')).seq : 0
  process.kill(pid, 'SIGUSR2')
  for (let i = 0; i < 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 5))
    try { const s = JSON.parse(readFileSync(file, 'utf8')); if (s.seq > seq) return s } catch {}
  }
  return null
}

const selfCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6 }
const median = (xs) => { const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b); return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN }

async function startUpstream (tmp) {
  const port = await freePort()
  const file = UPSTREAM === 'fake' ? 'upstream.js' : 'parsing-upstream.js'
  const child = start('upstream', process.execPath, [join(BENCH, file), `--port=${port}`], { logPath: join(tmp, 'upstream.log') })
  await waitHttp(`http://127.0.0.1:${port}/healthz`, { status: 404, child })
  return { port, pid: child.pid }
}

async function main () {
  const tmp = mkdtempSync(join(tmpdir(), 'independent-'))
  const up = await startUpstream(tmp)
  const targets = [{ name: 'direct', url: `http://127.0.0.1:${up.port}/api/v1/chat/completions`, headers: CLIENT_HEADERS, pid: null }]
  targets.push(await startBareNode({ tmp, upstreamPort: up.port, nodeArgs: [...PROBE, ...NODE] }))
  if (BARE_HEADROOM) targets.push(await startBareNode({ tmp, upstreamPort: up.port, name: 'bare-node-headroom', nodeArgs: [...PROBE, '--import', join(BENCH, 'gc-headroom-preload.js'), ...NODE] }))
  for (const mb of MAX_BODY) {
    const name = mb === 'default' ? 'usage-proxy' : `usage-proxy-${mb}mb`
    const env = { ...EXTRA_ENV, ...(mb === 'default' ? {} : { MAX_BODY_BYTES: String(Number(mb) * 1024 * 1024) }) }
    const db = await freshDatabase(`usage_proxy_indep_${mb}`)
    targets.push(await startUsageProxy({ tmp, upstreamPort: up.port, databaseUrl: db, name, extraEnv: env, nodeArgs: [...PROBE, ...NODE] }))
  }
  const bodyOf = (kind) => SHAPE === 'bench' ? requestBody(false, kind) : stringBody(kind)
  const rows = []
  for (let rep = 1; rep <= REPS; rep++) {
    for (const kind of BODIES) {
      const text = bodyOf(kind)
      for (const c of CONC) {
        for (const t of targets) {
          let b, a
          const edge = async () => ({ proxy: t.pid ? cpuSeconds(t.pid) : 0, upstream: cpuSeconds(up.pid), client: selfCpu(), gc: t.pid ? await gcState(t.pid) : null })
          const common = { url: t.url, concurrency: c, seconds: SECONDS, warmupSeconds: WARMUP, headers: t.headers, onMeasureStart: async () => { b = await edge() }, onMeasureEnd: async () => { a = await edge() } }
          const r = CLIENT === 'buffer'
            ? await runLoad({ ...common, body: SHAPE === 'bench' ? kind : kind, stream: false })
            : await runStringLoad({ ...common, body: text })
          const n = r.requests
          const lat = summarize(r.latencies)
          const gc = a.gc && b.gc ? {
            majorPerReq: (a.gc.major - b.gc.major) / n, minorPerReq: (a.gc.minor - b.gc.minor) / n,
            majorMsPerReq: (a.gc.majorMs - b.gc.majorMs) / n, minorMsPerReq: (a.gc.minorMs - b.gc.minorMs) / n,
            majorsPerSecond: (a.gc.major - b.gc.major) / r.seconds, heapUsedMb: a.gc.heapUsedMb, heapTotalMb: a.gc.heapTotalMb, externalMb: a.gc.externalMb, rssMb: a.gc.rssMb,
          } : null
          const row = {
            rep, body: kind, c, target: t.name, requests: n, errors: r.errors, errorKinds: r.errorKinds, rps: n / r.seconds, p50: lat.p50, p99: lat.p99,
            cpuMsPerReq: { proxy: t.pid ? (a.proxy - b.proxy) * 1000 / n : null, upstream: (a.upstream - b.upstream) * 1000 / n, client: (a.client - b.client) * 1000 / n },
            gc,
          }
          rows.push(row)
          say(`rep ${rep} ${kind} c=${c} ${t.name.padEnd(18)} ${Math.round(row.rps).toString().padStart(5)} req/s p50 ${lat.p50.toFixed(2)} ms cpu/req ${row.cpuMsPerReq.proxy?.toFixed(2) ?? '—'} ms` +
            (gc ? ` majors/s ${gc.majorsPerSecond.toFixed(1)} heap ${gc.heapUsedMb.toFixed(0)}/${gc.heapTotalMb.toFixed(0)} MB` : '') + (r.errors ? ` errors ${r.errors} ${JSON.stringify(r.errorKinds)}` : ''))
        }
      }
    }
  }
  await stopAll()
  say(`logs of the targets: ${tmp}`)
  const table = report(rows, targets.map((t) => t.name))
  process.stdout.write(table)
  mkdirSync(join(BENCH, 'results'), { recursive: true })
  writeFileSync(OUT, JSON.stringify({
    command: `node bench/independent.js ${process.argv.slice(2).join(' ')}`.trim(), at: new Date().toISOString(), loadAverage: readFileSync('/proc/loadavg', 'utf8').trim(),
    config: { BODIES, CONC, REPS, SECONDS, WARMUP, MAX_BODY, CLIENT, UPSTREAM, SHAPE, EXTRA_ENV, NODE }, project: ROOT, rows, markdown: table,
  }, null, 2) + '\n')
  say(`wrote ${OUT}`)
}

/** Per body, concurrency and target: medians over reps; targets against bare Node in the same reps. */
export function report (rows, names) {
  const f = (x, d = 2) => Number.isFinite(x) ? x.toFixed(d) : '—'
  let out = '| body | c | target | req/s | p50 ms | added p50 ms (limit) | CPU ms/req (x bare) | x bare with headroom | upstream / client CPU ms/req | major GCs/s | GC ms/req (major+minor) | verdict vs bare Node |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n'
  for (const body of new Set(rows.map((r) => r.body))) {
    for (const c of new Set(rows.map((r) => r.c))) {
      const of = (name) => rows.filter((r) => r.body === body && r.c === c && r.target === name)
      const direct = of('direct')
      const added = (name) => median(of(name).map((r) => r.p50 - (direct.find((d) => d.rep === r.rep)?.p50 ?? NaN)))
      const bareAdded = added('bare-node')
      const bareCpu = median(of('bare-node').map((r) => r.cpuMsPerReq.proxy))
      const bareHrCpu = median(of('bare-node-headroom').map((r) => r.cpuMsPerReq.proxy))
      for (const name of names) {
        const rs = of(name)
        if (!rs.length) continue
        const cpu = median(rs.map((r) => r.cpuMsPerReq.proxy))
        const add = added(name)
        const limit = 1.25 * bareAdded + 1
        const isProxy = name.startsWith('usage-proxy')
        const verdict = isProxy ? `${add <= limit ? 'latency met' : '**latency not met**'}, ${cpu / bareCpu <= 1.5 ? 'CPU met' : '**CPU not met**'}` : ''
        const gcs = rs.map((r) => r.gc).filter(Boolean)
        out += `| ${body} | ${c} | ${name} | ${Math.round(median(rs.map((r) => r.rps)))} | ${f(median(rs.map((r) => r.p50)))} | ${name === 'direct' ? '—' : `${f(add)}${isProxy ? ` (${f(limit)})` : ''}`} | ` +
          `${name === 'direct' ? '—' : `${f(cpu)}${isProxy ? ` (${f(cpu / bareCpu)}x)` : ''}`} | ${isProxy ? `${f(cpu / bareHrCpu)}x` : '—'} | ${f(median(rs.map((r) => r.cpuMsPerReq.upstream)))} / ${f(median(rs.map((r) => r.cpuMsPerReq.client)))} | ` +
          `${gcs.length ? f(median(gcs.map((g) => g.majorsPerSecond)), 1) : '—'} | ${gcs.length ? `${f(median(gcs.map((g) => g.majorMsPerReq)))}+${f(median(gcs.map((g) => g.minorMsPerReq)))}` : '—'} | ${verdict} |\n`
      }
    }
  }
  return out
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch(async (err) => { say(`failed: ${err.stack ?? err}`); await stopAll(); process.exit(1) })
}
