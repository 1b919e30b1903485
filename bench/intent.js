// Before/after of the journal's intent line (dispatch waits for its write at the end of the turn):
// requests/s of two builds of usage-proxy against the fast fake upstream, alternated A, B, A, B
// so both see the same machine.
//   node bench/intent.js --before=$(node bench/snapshot.js a6bd965) --after=$(node bench/snapshot.js HEAD) [--c=1,64] [--s=3] [--reps=3]
import { mkdirSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort, start, stopAll, waitHttp } from './children.js'
import { freshDatabase } from './db.js'
import { runLoad } from './load.js'
import { CLIENT_HEADERS, startUpstreamProcess, usageProxyEnv } from './targets.js'

const arg = (n, d) => { const a = process.argv.find((x) => x.startsWith(`--${n}=`)); return a ? a.slice(n.length + 3) : d }
const dirs = { before: arg('before'), after: arg('after') }
const cs = arg('c', '1,64').split(',').map(Number)
const secs = Number(arg('s', '3'))
const reps = Number(arg('reps', '3'))
const tmp = mkdtempSync(join(tmpdir(), 'bench-intent-'))
try {
  const up = await startUpstreamProcess(tmp)
  const targets = []
  for (const [name, dir] of Object.entries(dirs)) {
    const port = await freePort()
    const dataDir = join(tmp, `${name}-data`)
    mkdirSync(dataDir, { recursive: true })
    const child = start(name, process.execPath, [join(dir, 'dist', 'main.js')], {
      env: usageProxyEnv({ port, upstreamPort: up.port, databaseUrl: await freshDatabase(`usage_proxy_intent_${name}`), dataDir }), logPath: join(tmp, `${name}.log`), cwd: tmp,
    })
    await waitHttp(`http://127.0.0.1:${port}/readyz`, { child, timeoutMs: 60_000 })
    targets.push({ name, url: `http://127.0.0.1:${port}/api/v1/chat/completions` })
  }
  for (const c of cs) {
    const got = { before: [], after: [] }
    for (let r = 0; r < reps; r++) {
      for (const t of (r % 2 === 0 ? targets : [...targets].reverse())) {
        const l = await runLoad({ url: t.url, headers: CLIENT_HEADERS, concurrency: c, seconds: secs, warmupSeconds: 1 })
        const s = l.latencies.sort((a, b) => a - b)
        got[t.name].push(l.rps)
        console.log(`c=${c} ${t.name.padEnd(7)} ${Math.round(l.rps)} req/s p50 ${s[Math.floor(s.length / 2)].toFixed(3)} ms errors ${l.errors}`)
      }
    }
    const med = (a) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)]
    console.log(`c=${c} median: before ${Math.round(med(got.before))} req/s, after ${Math.round(med(got.after))} req/s (${((med(got.after) / med(got.before) - 1) * 100).toFixed(1)}%)`)
  }
} finally { await stopAll() }
