// `npm run bench -- --only fleet`: a fleet of sidecars (BENCH_FLEET_SIDECARS, 50), one organization
// each, whose only DATABASE_URL is one PgBouncer in transaction mode; BENCH_FLEET_LOADED (5) of
// them under load (BENCH_FLEET_CONCURRENCY, 32 requests at a time each) for BENCH_FLEET_SECONDS
// (20). Measured: Postgres backends used (idle fleet, and the peak under load), rows/s from the
// first request until every row is committed, memory (RSS) per sidecar idle and loaded, bytes
// per row on disk; then extrapolated to 500 organizations. Prints Markdown, writes
// bench/results/fleet-latest.json. Needs Debian's pgbouncer (apt-get install pgbouncer).
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { Agent, request } from 'undici'
import { freePort, start, stopAll, waitHttp } from './children.js'
import { freshDatabase, openDb } from './db.js'
import { BENCH, CLIENT_HEADERS, NODE_FLAGS, ROOT, minimalEnv, startUpstreamProcess } from './targets.js'

const env = process.env
const num = (name, dflt) => (env[name] === undefined || env[name] === '' ? dflt : Number(env[name]))
const SIDECARS = num('BENCH_FLEET_SIDECARS', 50)
const LOADED = num('BENCH_FLEET_LOADED', 5)
const CONCURRENCY = num('BENCH_FLEET_CONCURRENCY', 32)
const SECONDS = num('BENCH_FLEET_SECONDS', 20)
const POOL_SIZE = num('BENCH_FLEET_POOL_SIZE', 20)
const say = (m) => process.stderr.write(`bench fleet: ${m}\n`)

function pgbouncerPath () {
  for (const p of ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer']) if (existsSync(p)) return p
  const w = spawnSync('sh', ['-c', 'command -v pgbouncer'], { encoding: 'utf8' })
  if (w.status === 0 && w.stdout.trim()) return w.stdout.trim()
  throw new Error('pgbouncer is not installed: apt-get install pgbouncer')
}

async function startPgbouncer (tmp, pgPort) {
  const dir = join(tmp, 'pgbouncer')
  mkdirSync(dir, { recursive: true })
  chmodSync(tmp, 0o755)
  chmodSync(dir, 0o755)
  const port = await freePort()
  writeFileSync(join(dir, 'users.txt'), '"postgres" ""\n')
  writeFileSync(join(dir, 'pgbouncer.ini'), [
    '[databases]', `* = host=127.0.0.1 port=${pgPort}`, '[pgbouncer]', 'listen_addr = 127.0.0.1', `listen_port = ${port}`, 'unix_socket_dir =',
    'auth_type = trust', `auth_file = ${join(dir, 'users.txt')}`, 'pool_mode = transaction', `default_pool_size = ${POOL_SIZE}`,
    'max_client_conn = 5000', 'log_connections = 0', 'log_disconnections = 0', '',
  ].join('\n'))
  for (const f of ['users.txt', 'pgbouncer.ini']) chmodSync(join(dir, f), 0o644)
  // PgBouncer refuses to run as root: as root it assumes the postgres user's identity.
  const asUser = process.getuid?.() === 0 ? ['-u', 'postgres'] : []
  const child = start('pgbouncer', pgbouncerPath(), [...asUser, join(dir, 'pgbouncer.ini')], { logPath: join(tmp, 'pgbouncer.log') })
  for (let i = 0; i < 100; i++) {
    if (existsSync(join(tmp, 'pgbouncer.log')) && readFileSync(join(tmp, 'pgbouncer.log'), 'utf8').includes(`listening on 127.0.0.1:${port}`)) return { port, child }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error('pgbouncer did not start: ' + readFileSync(join(tmp, 'pgbouncer.log'), 'utf8'))
}

function rssMb (pid) {
  try { return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024 } catch { return NaN }
}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.floor(s.length / 2)] : NaN }

async function startSidecar (tmp, i, upstreamPort, databaseUrl) {
  const port = await freePort()
  const name = `fleet_${String(i).padStart(3, '0')}`
  const dataDir = join(tmp, `${name}-data`)
  mkdirSync(dataDir, { recursive: true })
  const child = start(name, process.execPath, [...NODE_FLAGS, join(ROOT, 'dist', 'main.js')], {
    cwd: tmp,
    logPath: join(tmp, `${name}.log`),
    env: minimalEnv({
      OPENROUTER_API_KEY: 'sk-or-v1-bench-0000000000000000', OPENROUTER_EXTERNAL_USER: name, ORGANIZATION_NAME: `Fleet ${i}`,
      DATABASE_URL: databaseUrl, OPENROUTER_BASE_URL: `http://127.0.0.1:${upstreamPort}/api/v1`, PORT: String(port), HOST: '127.0.0.1',
      LOG_LEVEL: 'warn', ACCESS_LOG: 'off', DATA_DIR: dataDir,
    }),
  })
  await waitHttp(`http://127.0.0.1:${port}/readyz`, { child, timeoutMs: 120_000 })
  return { name, port, child, url: `http://127.0.0.1:${port}/api/v1/chat/completions` }
}

export async function fleet () {
  // Only dist/ is needed here (bench/node_modules holds the other targets' software).
  if (!existsSync(join(ROOT, 'dist', 'main.js'))) throw new Error('dist/main.js missing: npm run build')
  const tmp = mkdtempSync(join(tmpdir(), 'usage-proxy-fleet-'))
  const dbName = 'usage_proxy_fleet_bench'
  const directUrl = await freshDatabase(dbName)
  const direct = openDb(directUrl)
  const pgPort = Number(new URL(directUrl).port || 5432)
  try {
    const upstream = await startUpstreamProcess(tmp)
    const bouncer = await startPgbouncer(tmp, pgPort)
    const pooled = `postgres://postgres@127.0.0.1:${bouncer.port}/${dbName}`
    const backends = async () => (await direct`select count(*)::int as n from pg_stat_activity where datname = ${dbName} and pid <> pg_backend_pid()`)[0].n
    say(`starting ${SIDECARS} sidecars through pgbouncer (transaction mode, default_pool_size ${POOL_SIZE})`)
    const sidecars = []
    const bootStarted = Date.now()
    for (let i = 0; i < SIDECARS; i += 10) {
      sidecars.push(...await Promise.all(Array.from({ length: Math.min(10, SIDECARS - i) }, (_, k) => startSidecar(tmp, i + k, upstream.port, pooled))))
    }
    const bootSeconds = (Date.now() - bootStarted) / 1000
    await new Promise((r) => setTimeout(r, 3000))
    const idle = { backends: await backends(), rssMb: median(sidecars.map((s) => rssMb(s.child.pid))) }
    say(`idle: ${idle.backends} Postgres backends, median RSS ${idle.rssMb.toFixed(1)} MB`)

    const loaded = sidecars.slice(0, LOADED)
    const agent = new Agent({ connections: LOADED * CONCURRENCY })
    const rowsBefore = (await direct`select count(*)::int as n from usage_events`)[0].n
    let answered = 0
    let failed = 0
    let peakBackends = 0
    const stopAt = Date.now() + SECONDS * 1000
    const started = Date.now()
    const sampler = setInterval(() => { void backends().then((n) => { peakBackends = Math.max(peakBackends, n) }, () => {}) }, 250)
    const loadedRss = []
    const rssSampler = setInterval(() => { loadedRss.push(median(loaded.map((s) => rssMb(s.child.pid)))) }, 1000)
    await Promise.all(loaded.flatMap((s) => Array.from({ length: CONCURRENCY }, async () => {
      while (Date.now() < stopAt) {
        const res = await request(s.url, {
          dispatcher: agent, method: 'POST', headers: { ...CLIENT_HEADERS, 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'openai/gpt-4o-mini', messages: [{ role: 'user', content: 'hello' }] }),
        })
        await res.body.dump()
        if (res.statusCode === 200) answered++
        else failed++
      }
    })))
    // Rows/s: from the first request until every answered request has its row.
    for (;;) {
      const n = (await direct`select count(*)::int as n from usage_events`)[0].n - rowsBefore
      if (n >= answered) break
      await new Promise((r) => setTimeout(r, 100))
    }
    const committedSeconds = (Date.now() - started) / 1000
    clearInterval(sampler)
    clearInterval(rssSampler)
    await agent.close()
    const [size] = await direct`
      select count(*)::bigint::text as rows,
             (select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class c
               where c.relkind in ('r', 'p') and c.relnamespace = 'public'::regnamespace
                 and (c.relname like 'usage\\_events%' or c.relname like 'usage\\_%rollup%' or c.relname = 'usage_generation_ids' or c.relname = 'user_mappings'))::bigint::text as bytes
        from usage_events`
    const result = {
      sidecars: SIDECARS, loaded: LOADED, concurrencyEach: CONCURRENCY, seconds: SECONDS, poolSize: POOL_SIZE, bootSeconds,
      idle,
      underLoad: {
        answered, failed, peakBackends, rowsPerSecond: answered / committedSeconds, requestsPerSecond: answered / SECONDS,
        committedSeconds, loadedRssMb: Math.max(...loadedRss), idleSidecarsRssMb: median(sidecars.slice(LOADED).map((s) => rssMb(s.child.pid))),
      },
      disk: { rows: Number(size.rows), bytes: Number(size.bytes), bytesPerRow: Number(size.bytes) / Math.max(1, Number(size.rows)) },
    }
    mkdirSync(join(BENCH, 'results'), { recursive: true })
    writeFileSync(join(BENCH, 'results', 'fleet-latest.json'), JSON.stringify(result, null, 2) + '\n')
    process.stdout.write(markdown(result))
    return result
  } finally {
    await stopAll()
    await direct.end({ timeout: 2 })
  }
}

function markdown (r) {
  const u = r.underLoad
  return [
    `## Fleet: ${r.sidecars} sidecars through one PgBouncer (transaction mode, default_pool_size ${r.poolSize})`, '',
    `| | |`, `|---|---|`,
    `| boot of ${r.sidecars} sidecars (10 at a time) | ${r.bootSeconds.toFixed(1)} s |`,
    `| Postgres backends, fleet idle | ${r.idle.backends} |`,
    `| Postgres backends, peak with ${r.loaded} under load | ${u.peakBackends} |`,
    `| requests answered (${r.loaded} × ${r.concurrencyEach} at a time, ${r.seconds} s) | ${u.answered} (${u.failed} not 200) |`,
    `| rows/s, first request to last row committed | ${u.rowsPerSecond.toFixed(0)} |`,
    `| memory per sidecar, idle (median RSS) | ${r.idle.rssMb.toFixed(1)} MB |`,
    `| memory per sidecar, loaded (peak of the median) | ${u.loadedRssMb.toFixed(1)} MB |`,
    `| disk per row (rows, rollups, generation ids, mappings) | ${r.disk.bytesPerRow.toFixed(0)} bytes over ${r.disk.rows} rows |`, '',
  ].join('\n')
}

if (process.argv[1] && process.argv[1].endsWith('fleet.js')) fleet().then(() => process.exit(0), async (err) => { say(err.stack ?? String(err)); await stopAll(); process.exit(1) })
