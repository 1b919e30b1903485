// The five things measured side by side, each behind a URL on 127.0.0.1. Every target gets the
// same request (the identity headers Open WebUI forwards included); each proxy forwards it to the
// same fake upstream. A target whose software is missing is skipped with a message.
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { freePort, start, waitHttp } from './children.js'
import { nginxAvailable, startNginx, NGINX } from './nginx.js'

export const BENCH = new URL('.', import.meta.url).pathname.replace(/\/$/, '')
/** The project measured (its dist/ and sql/): the work tree, or a snapshot made by snapshot.js. */
export const ROOT = process.env.BENCH_PROJECT_DIR ? resolve(process.env.BENCH_PROJECT_DIR) : join(BENCH, '..')
/**
 * BENCH_NODE_FLAGS: node flags for both Node proxies (the bare one and usage-proxy), never for one
 * alone, so a V8 setting is compared on equal footing (e.g. --initial-old-space-size=64, which
 * ends the back-to-back full collections large bodies cause; BENCHMARKS.md, session 7).
 */
export const NODE_FLAGS = (process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean)
/**
 * The node flags usage-proxy ships with: those of the measured project's `npm start`
 * (package.json, the same as the image's CMD), so a snapshot of another commit runs with its own.
 */
export function productNodeFlags (root = ROOT) {
  const start = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts?.start ?? ''
  const words = start.split(/\s+/).filter(Boolean)
  return words[0] === 'node' ? words.slice(1, words.findIndex((w) => w.endsWith('main.js'))) : []
}
/** BENCH_SIDECAR_ENV: more environment for usage-proxy, as JSON (e.g. '{"MAX_BODY_BYTES":"67108864"}'). */
const SIDECAR_ENV = JSON.parse(process.env.BENCH_SIDECAR_ENV || '{}')
export const PORTKEY_BIN = join(BENCH, 'node_modules', '@portkey-ai', 'gateway', 'build', 'start-server.js')

export const TARGET_NAMES = ['direct', 'nginx', 'bare-node', 'floor', 'portkey', 'usage-proxy']
/**
 * Opt-in targets. bare-node-headroom: the bare proxy with usage-proxy's GC headroom preloaded
 * (bench/gc-headroom-preload.js), to compare the two at the same GC regime.
 * usage-proxy-budgets (BENCH_TARGETS=usage-proxy,usage-proxy-budgets): usage-proxy with an organization
 * and a per-user budget configured (never reached), for the cost of enforcement. It is its own
 * organization, so the plain usage-proxy in the same database still has no budget.
 */
export const EXTRA_TARGETS = ['usage-proxy-budgets', 'bare-node-headroom']
const BUDGETS_ENV = { OPENROUTER_EXTERNAL_USER: 'bench_org_budgets', ORG_BUDGET_USD: '1000000', USER_BUDGET_USD: '1000000' }

/** What every client request carries (usage-proxy replaces the key and keeps the identity). */
export const CLIENT_HEADERS = {
  authorization: 'Bearer sk-bench-client-key',
  'x-openwebui-user-id': 'bench-user-1',
  'x-openwebui-user-name': 'Bench%20User',
  'x-openwebui-user-email': 'bench@example.com',
  'x-openwebui-user-role': 'user',
  'x-openwebui-chat-id': 'bench-chat-1',
}

const CHAT = '/api/v1/chat/completions'

export function minimalEnv (extra) {
  return { PATH: process.env.PATH, HOME: process.env.HOME ?? '/tmp', ...extra }
}

export function usageProxyEnv ({ port, upstreamPort, databaseUrl, dataDir }) {
  return minimalEnv({
    OPENROUTER_API_KEY: 'sk-or-v1-bench-0000000000000000',
    OPENROUTER_EXTERNAL_USER: 'bench_org',
    ORGANIZATION_NAME: 'Bench Org',
    DATABASE_URL: databaseUrl,
    OPENROUTER_BASE_URL: `http://127.0.0.1:${upstreamPort}/api/v1`,
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    DATA_DIR: dataDir,
    // The default (256) would queue the 1,000 slow streams inside the sidecar instead of holding
    // them open: the memory figure is for 1,000 streams really in flight.
    UPSTREAM_CONNECTIONS: '1100',
  })
}

export async function startUpstreamProcess (tmp) {
  const port = await freePort()
  const child = start('upstream', process.execPath, [join(BENCH, 'upstream.js'), `--port=${port}`], { logPath: join(tmp, 'upstream.log') })
  await waitHttp(`http://127.0.0.1:${port}/healthz`, { status: 404, child })
  return { port, child }
}

export async function startUsageProxy ({ tmp, upstreamPort, databaseUrl, nodeArgs = [], name = 'usage-proxy', extraEnv = {}, root = ROOT }) {
  const port = await freePort()
  const dataDir = join(tmp, `${name}-data`)
  mkdirSync(dataDir, { recursive: true })
  const child = start(name, process.execPath, [...productNodeFlags(root), ...NODE_FLAGS, ...nodeArgs, join(root, 'dist', 'main.js')], {
    env: { ...usageProxyEnv({ port, upstreamPort, databaseUrl, dataDir }), ...SIDECAR_ENV, ...extraEnv }, logPath: join(tmp, `${name}.log`), cwd: tmp,
  })
  await waitHttp(`http://127.0.0.1:${port}/readyz`, { child, timeoutMs: 60_000 })
  return { name, url: `http://127.0.0.1:${port}${CHAT}`, headers: CLIENT_HEADERS, child, pid: child.pid }
}

export async function startBareNode ({ tmp, upstreamPort, nodeArgs = [], name = 'bare-node' }) {
  const port = await freePort()
  const child = start(name, process.execPath, [...NODE_FLAGS, ...nodeArgs, join(BENCH, 'bare-proxy.js'), `--port=${port}`, `--upstream=http://127.0.0.1:${upstreamPort}`], { logPath: join(tmp, `${name}.log`) })
  await waitHttp(`http://127.0.0.1:${port}/healthz`, { status: 404, child })
  return { name, url: `http://127.0.0.1:${port}${CHAT}`, headers: CLIENT_HEADERS, child, pid: child.pid }
}

/** The metering floor (bench/floor-proxy.js): bare Node plus a regex usage read and a batched row per request. */
// `with` adds the brief's promises to it one by one (bench/floor-proxy.js --with): the targets
// floor-body, floor-journal, floor-ledger and floor-all (all three).
export async function startFloor ({ tmp, upstreamPort, databaseUrl, nodeArgs = [], name = 'floor', with: extras = [] }) {
  const port = await freePort()
  const child = start(name, process.execPath, [...NODE_FLAGS, ...nodeArgs, join(BENCH, 'floor-proxy.js'), `--port=${port}`, `--upstream=http://127.0.0.1:${upstreamPort}`, `--db=${databaseUrl}`, `--with=${extras.join(',')}`], { logPath: join(tmp, `${name}.log`) })
  await waitHttp(`http://127.0.0.1:${port}/healthz`, { status: 404, child })
  return { name, url: `http://127.0.0.1:${port}${CHAT}`, headers: CLIENT_HEADERS, child, pid: child.pid }
}
export const FLOOR_VARIANTS = { 'floor-body': ['body'], 'floor-journal': ['journal'], 'floor-ledger': ['ledger'], 'floor-all': ['body', 'journal', 'ledger'] }

export async function startPortkey ({ tmp, upstreamPort }) {
  const port = await freePort()
  // Exactly what `npx @portkey-ai/gateway --port=N --headless` runs, minus the npm wrapper
  // process (which would otherwise be counted in Portkey's RSS and CPU).
  const child = start('portkey', process.execPath, [PORTKEY_BIN, `--port=${port}`, '--headless'], {
    env: minimalEnv({ NODE_ENV: 'production' }), logPath: join(tmp, 'portkey.log'), cwd: tmp,
  })
  await waitHttp(`http://127.0.0.1:${port}/`, { contains: 'AI Gateway', child })
  return {
    name: 'portkey',
    url: `http://127.0.0.1:${port}/v1/chat/completions`,
    headers: { ...CLIENT_HEADERS, 'x-portkey-provider': 'openai', 'x-portkey-custom-host': `http://127.0.0.1:${upstreamPort}/api/v1` },
    child,
    pid: child.pid,
  }
}

/** Starts the requested targets; returns [{ name, url, headers, pid? } | { name, skipped }]. */
export async function startTargets ({ tmp, upstreamPort, databaseUrl, names = TARGET_NAMES, log = (m) => process.stderr.write(m + '\n') }) {
  const out = []
  for (const name of names) {
    if (name === 'direct') {
      out.push({ name, url: `http://127.0.0.1:${upstreamPort}${CHAT}`, headers: CLIENT_HEADERS, pid: null })
    } else if (name === 'nginx') {
      if (!nginxAvailable()) {
        const msg = `${NGINX} not found: skipping the nginx target (install it with: apt-get update && apt-get install -y nginx-light)`
        log(`bench: ${msg}`)
        out.push({ name, skipped: msg })
        continue
      }
      const port = await freePort()
      const child = await startNginx({ tmp, port, upstreamPort })
      out.push({ name, url: `http://127.0.0.1:${port}${CHAT}`, headers: CLIENT_HEADERS, child, pid: child.pid })
    } else if (name === 'bare-node') {
      out.push(await startBareNode({ tmp, upstreamPort }))
    } else if (name === 'bare-node-headroom') {
      out.push(await startBareNode({ tmp, upstreamPort, name, nodeArgs: ['--import', join(BENCH, 'gc-headroom-preload.js')] }))
    } else if (name === 'floor') {
      out.push(await startFloor({ tmp, upstreamPort, databaseUrl }))
    } else if (FLOOR_VARIANTS[name]) {
      out.push(await startFloor({ tmp, upstreamPort, databaseUrl, name, with: FLOOR_VARIANTS[name] }))
    } else if (name === 'portkey') {
      if (!existsSync(PORTKEY_BIN)) {
        const msg = `${PORTKEY_BIN} not found: skipping Portkey (run: npm ci --prefix bench)`
        log(`bench: ${msg}`)
        out.push({ name, skipped: msg })
        continue
      }
      out.push(await startPortkey({ tmp, upstreamPort }))
    } else if (name === 'usage-proxy') {
      out.push(await startUsageProxy({ tmp, upstreamPort, databaseUrl }))
    } else if (name === 'usage-proxy-before') {
      if (!process.env.BENCH_BEFORE_DIR) throw new Error('usage-proxy-before needs BENCH_BEFORE_DIR (e.g. $(node bench/snapshot.js main))')
      // An organization of its own: bench/run.js counts bench_org's rows against usage-proxy's answers.
      out.push(await startUsageProxy({ tmp, upstreamPort, databaseUrl, name, root: resolve(process.env.BENCH_BEFORE_DIR), extraEnv: { OPENROUTER_EXTERNAL_USER: 'bench_before_org' } }))
    } else if (name === 'usage-proxy-budgets') {
      out.push(await startUsageProxy({ tmp, upstreamPort, databaseUrl, name, extraEnv: BUDGETS_ENV }))
    } else {
      throw new Error(`unknown target ${name}`)
    }
  }
  return out
}
