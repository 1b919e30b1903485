// The benchmark entry (`npm run bench`): direct upstream, nginx, a bare Node pass-through, Portkey
// and usage-proxy, measured in the same run in alternating rounds; then 1,000 slow streams for
// memory, then the ledger micro-bench. Prints Markdown, writes bench/results/latest.json.
//
// Environment: BENCH_SECONDS (4) per measurement, BENCH_ROUNDS (2), BENCH_WARMUP (0.5) seconds,
// BENCH_TARGETS (comma list of direct,nginx,bare-node,floor,portkey,usage-proxy; usage-proxy-budgets is opt-in), BENCH_SCENARIOS
// (c1,c1-stream,c64,c64-stream,c1-whole,c64-whole,c64-stream-whole,chat500k-c1,chat500k-c8,image4m-c1,image4m-c8), BENCH_SLOW_STREAMS (1000, 0 skips), BENCH_SLOW_PACE_MS (100),
// BENCH_SLOW_EVENTS (20), BENCH_LEDGER_RECORDS (200000, 0 skips), BENCH_LEDGER_NO_JOURNAL (unset;
// 1 adds a run without the journal), BENCH_QUIET_MAX_MS (5000) and BENCH_QUIET_BUDGET_MS (30000):
// how long to wait for other work on the machine to calm down before one measurement, and in all.
// BENCH_PROJECT_DIR (a snapshot from bench/snapshot.js; default: this work tree), BENCH_NGINX
// (/usr/sbin/nginx), BENCH_PG_URL (postgres://postgres@127.0.0.1:5432/postgres, loopback only),
// BENCH_NODE_FLAGS (node flags for bare-node and usage-proxy alike; default none), BENCH_SIDECAR_ENV
// (JSON: more environment for usage-proxy, e.g. '{"MAX_BODY_BYTES":"67108864"}').
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync, readFileSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFileSync, spawn } from 'node:child_process'
import { stop, stopAll } from './children.js'
import { ensurePrerequisites } from './prereq.js'
import { freshDatabase, openDb } from './db.js'
import { measure } from './measure.js'
import { slowStreams } from './slow-streams.js'
import { waitQuiet } from './procstat.js'
import { aggregate, checks, markdown } from './report.js'
import { ratioChecks } from './ratios.js'
import { BENCH, NODE_FLAGS, ROOT, TARGET_NAMES, startTargets, startUpstreamProcess } from './targets.js'

const env = process.env
const num = (name, dflt) => (env[name] === undefined || env[name] === '' ? dflt : Number(env[name]))
const ONLY_BODIES = (process.env.BENCH_ONLY ?? (process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : '')) === 'bodies'
const SECONDS = num('BENCH_SECONDS', ONLY_BODIES ? 3 : 4)
const ROUNDS = num('BENCH_ROUNDS', ONLY_BODIES ? 3 : 2)
const WARMUP = num('BENCH_WARMUP', 0.5)
const QUIET_MAX_MS = num('BENCH_QUIET_MAX_MS', 5_000)
let quietBudgetMs = num('BENCH_QUIET_BUDGET_MS', 30_000)
const SLOW_STREAMS = num('BENCH_SLOW_STREAMS', ONLY_BODIES ? 0 : 1000)
const SLOW_PACE_MS = num('BENCH_SLOW_PACE_MS', 100)
const SLOW_EVENTS = num('BENCH_SLOW_EVENTS', 20)
const LEDGER_RECORDS = num('BENCH_LEDGER_RECORDS', ONLY_BODIES ? 0 : 200_000)
const TARGETS = (env.BENCH_TARGETS ?? (ONLY_BODIES ? 'direct,bare-node,bare-node-headroom,usage-proxy' : TARGET_NAMES.join(','))).split(',').map((s) => s.trim()).filter(Boolean)
// BENCH_ONLY=bodies (or `npm run bench -- --only bodies`): the large-body scenarios only (large bodies,
// small requests under both upstream modes), direct/bare-node/bare-node-headroom/usage-proxy, 3 rounds, no slow
// streams, no ledger micro-bench: a few minutes instead of the whole bench.
const onlyArg = process.argv.indexOf('--only')
const ONLY = env.BENCH_ONLY ?? (onlyArg > 0 ? process.argv[onlyArg + 1] : undefined)
const WHOLE = { 'x-bench-write': 'whole' }
const ALL_SCENARIOS = [
  { name: 'c1', concurrency: 1, stream: false },
  { name: 'c1-stream', concurrency: 1, stream: true },
  { name: 'c64', concurrency: 64, stream: false },
  { name: 'c64-stream', concurrency: 64, stream: true },
  { name: 'c1-whole', concurrency: 1, stream: false, headers: WHOLE },
  { name: 'c64-whole', concurrency: 64, stream: false, headers: WHOLE },
  { name: 'c64-stream-whole', concurrency: 64, stream: true, headers: WHOLE },
  { name: 'chat500k-c1', concurrency: 1, stream: false, body: 'chat500k' },
  { name: 'chat500k-c8', concurrency: 8, stream: false, body: 'chat500k' },
  { name: 'image4m-c1', concurrency: 1, stream: false, body: 'image4m' },
  { name: 'image4m-c8', concurrency: 8, stream: false, body: 'image4m' },
]
const BODY_SCENARIOS = 'c1,c64,c64-stream,c1-whole,c64-whole,c64-stream-whole,chat500k-c1,chat500k-c8,image4m-c1,image4m-c8'
const SCENARIOS = ALL_SCENARIOS.filter((s) => (env.BENCH_SCENARIOS ?? (ONLY === 'bodies' ? BODY_SCENARIOS : ALL_SCENARIOS.map((x) => x.name).join(','))).split(',').includes(s.name))

const say = (m) => process.stderr.write(`bench: ${m}\n`)

/** Waits for a quiet machine, within the per-measurement cap and what is left of the budget. */
async function quiet () {
  const q = await waitQuiet({ maxMs: Math.max(0, Math.min(QUIET_MAX_MS, quietBudgetMs)) })
  quietBudgetMs -= q.waitedMs
  return q
}

/** Which code was measured: the commit, whether src/ had uncommitted edits, when dist/ was built. */
function build () {
  const git = (...args) => { try { return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8' }).trim() } catch { return null } }
  const snapshot = existsSync(join(ROOT, 'COMMIT')) ? readFileSync(join(ROOT, 'COMMIT'), 'utf8').trim() : null
  return {
    projectDir: ROOT,
    commit: snapshot ?? git('rev-parse', 'HEAD'),
    // A snapshot is a clean build of its commit; the work tree may carry edits under way.
    srcUncommittedFiles: snapshot ? 0 : (git('status', '--porcelain', '--', 'src') ?? '').split('\n').filter(Boolean).length,
    distBuiltAt: statSync(join(ROOT, 'dist', 'main.js')).mtime.toISOString(),
  }
}

function machine () {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  return {
    nproc: cpus().length,
    cpuModel: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? 'unknown',
    node: process.version,
    memoryGb: Math.round(Number(/MemTotal:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))[1]) / 1048576),
  }
}

function ledgerBench (extra = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(BENCH, 'ledger-bench.js'), `--records=${LEDGER_RECORDS}`, ...extra], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (d) => { out += d })
    child.once('error', reject)
    child.once('exit', (code) => code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop())) : reject(new Error(`ledger-bench exited ${code}`)))
  })
}

let tmp = null

async function main () {
  // `--only fleet`: the fleet through one PgBouncer (bench/fleet.js), nothing else.
  if (ONLY === 'fleet') { await (await import('./fleet.js')).fleet(); return }
  await ensurePrerequisites()
  tmp = mkdtempSync(join(tmpdir(), 'usage-proxy-bench-'))
  const startedAt = new Date().toISOString()
  const measurements = []
  const slow = []
  const ledger = []
  let completeness = null
  let ledgerSql = null
  let targets = []
  try {
    const upstream = await startUpstreamProcess(tmp)
    const databaseUrl = TARGETS.some((n) => n.startsWith('usage-proxy') || n === 'floor') ? await freshDatabase('usage_proxy_bench') : null
    targets = await startTargets({ tmp, upstreamPort: upstream.port, databaseUrl, names: TARGETS })
    if (databaseUrl) ledgerSql = openDb(databaseUrl)
    const live = targets.filter((t) => !t.skipped)
    const okResponses = { 'usage-proxy': 0 }

    for (let round = 1; round <= ROUNDS; round++) {
      for (const scenario of SCENARIOS) {
        for (const target of live) {
          const q = await quiet()
          const m = await measure({
            target, scenario, seconds: SECONDS, warmupSeconds: WARMUP, upstreamPid: upstream.child.pid,
            ledgerSql: target.name === 'usage-proxy' ? ledgerSql : null,
          })
          m.round = round
          m.quietBefore = q
          measurements.push(m)
          if (target.name === 'usage-proxy') okResponses['usage-proxy'] += m.okTotal
          say(`load ${readFileSync('/proc/loadavg', 'utf8').split(' ')[0]} round ${round} ${scenario.name.padEnd(16)} ${target.name.padEnd(11)} ${Math.round(m.rps).toString().padStart(6)} req/s  p50 ${m.latencyMs.p50.toFixed(3)} ms  errors ${m.errors}` +
            (q.busyCores > 0.3 ? `  (machine still busy: ${q.busyCores.toFixed(2)} cores before)` : ''))
        }
      }
    }

    // The throughput processes stop here (usage-proxy gracefully: its ledger flushes).
    for (const t of live) if (t.child) await stop(t.child, 30_000)

    if (SLOW_STREAMS > 0) {
      const names = TARGETS.filter((n) => n === 'bare-node' || n === 'usage-proxy')
      const ms = await slowStreams({
        tmp, upstream, databaseUrl, names, concurrency: SLOW_STREAMS, paceMs: SLOW_PACE_MS, events: SLOW_EVENTS, seconds: SECONDS, before: quiet, say,
      })
      for (const m of ms) if (m.target === 'usage-proxy') okResponses['usage-proxy'] += m.okTotal
      slow.push(...ms)
    }

    if (ledgerSql) {
      const rows = await ledgerSql`select outcome, count(*)::int as n from usage_events where organization_id = 'bench_org' group by outcome order by outcome`
      const okRows = rows.find((r) => r.outcome === 'ok')?.n ?? 0
      const others = rows.filter((r) => r.outcome !== 'ok')
      completeness = {
        okRows,
        okResponses: okResponses['usage-proxy'],
        otherRows: others.reduce((s, r) => s + r.n, 0),
        otherOutcomes: others.map((r) => `${r.outcome}: ${r.n}`).join(', '),
      }
      say(`ledger: ${okRows} ok rows for ${okResponses['usage-proxy']} good responses`)
    }
    await stopAll()

    if (LEDGER_RECORDS > 0) {
      say(`ledger micro-bench: ${LEDGER_RECORDS} records, journal on`)
      ledger.push(await ledgerBench())
      if (env.BENCH_LEDGER_NO_JOURNAL === '1') {
        say(`ledger micro-bench: ${LEDGER_RECORDS} records, no journal`)
        ledger.push(await ledgerBench(['--no-journal']))
      }
    }
  } finally {
    await stopAll()
    await ledgerSql?.end({ timeout: 2 }).catch(() => {})
  }

  const figures = aggregate(measurements)
  const checkList = [...checks({ figures, slow, ledger }), ...ratioChecks(measurements)]
  const skipped = targets.filter((t) => t.skipped)
  const table = markdown({ figures, slow, ledger, checkList, skipped, completeness })
  process.stdout.write(table)
  const strip = ({ samples, ...rest }) => rest
  mkdirSync(join(BENCH, 'results'), { recursive: true })
  const results = {
    startedAt,
    finishedAt: new Date().toISOString(),
    command: 'npm run bench' + (ONLY ? ` -- --only ${ONLY}` : ''),
    loadAverage: readFileSync('/proc/loadavg', 'utf8').trim(),
    config: { SECONDS, ROUNDS, WARMUP, TARGETS, SCENARIOS, SLOW_STREAMS, SLOW_PACE_MS, SLOW_EVENTS, LEDGER_RECORDS, QUIET_MAX_MS, NODE_FLAGS },
    machine: machine(),
    build: build(),
    figures,
    checks: checkList,
    slowStreams: slow.map(strip),
    ledger,
    completeness,
    skipped: skipped.map((t) => ({ name: t.name, reason: t.skipped })),
    measurements: measurements.map(strip),
    markdown: table,
  }
  writeFileSync(join(BENCH, 'results', 'latest.json'), JSON.stringify(results, null, 2) + '\n')
  rmSync(tmp, { recursive: true, force: true })
  say('wrote bench/results/latest.json')
}

main().catch(async (err) => {
  say(`failed: ${err.stack ?? err}`)
  if (tmp) say(`logs of the child processes are in ${tmp}`)
  await stopAll()
  process.exit(1)
})
