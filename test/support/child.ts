import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { build, isCurrent } from '../../scripts/build.mjs'
import { freePort } from './ports.js'

export { freePort }

// The sidecar as a real process (dist/main.js, built by `npm test` before tap runs): for what
// only a process can show: signals, SIGKILL, and the process-wide crash guard.

export interface Child {
  proc: ChildProcess
  url: string
  logs: () => Array<Record<string, any>>
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  waitReady: (timeoutMs?: number) => Promise<void>
}

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const MAIN = join(ROOT, 'dist', 'main.js')
export const CLI = join(ROOT, 'dist', 'cli.js')

/**
 * dist/ as the sources are now: `npm test` builds before tap runs; a lone `npx tap test/<file>`
 * after an edit builds here (scripts/build.mjs, which marks the build current).
 */
export function ensureBuilt (): void {
  if (!isCurrent()) build()
}

/**
 * Every process a test starts runs here: an empty directory, so a developer's `.env` in the
 * repository (README's quick start writes one) is never read, and `./data` is never written
 * into the checkout. Its environment is the explicit object the test passes, plus PATH.
 */
export function cleanCwd (): string {
  return mkdtempSync(join(tmpdir(), 'usage-proxy-cwd-'))
}

export function childEnv (env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '', ...env } as NodeJS.ProcessEnv
}

/** Runs node with the given arguments, immune to the developer's environment (see cleanCwd). */
export function runNode (args: string[], env: Record<string, string | undefined> = {}, timeoutMs = 20_000): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, args, { cwd: cleanCwd(), env: childEnv(env), encoding: 'utf8', timeout: timeoutMs })
}

/**
 * runNode without blocking this process's event loop: for a child that talks to something this
 * process serves, such as the embedded test database (test/support/db.ts serves it from the test's
 * own process, and a spawnSync would leave the child's connection unanswered).
 */
export function runNodeAsync (args: string[], env: Record<string, string | undefined> = {}, timeoutMs = 20_000): Promise<{ status: number | null, stdout: string, stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: cleanCwd(), env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d })
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d })
    child.on('error', reject)
    child.on('close', (status) => resolve({ status, stdout, stderr }))
  })
}

/** Starts node with the given arguments, immune to the developer's environment (see cleanCwd). */
export function spawnNode (args: string[], env: Record<string, string | undefined> = {}, cwd = cleanCwd()): ChildProcess {
  return spawn(process.execPath, args, { cwd, env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
}

/**
 * The environment of a sidecar a fault test starts: one organization on `upstream` (a fake
 * OpenRouter), quick ledger flushes, a journal in `dataDir`; `extra` overrides any of it.
 */
export function faultEnv (o: { org: string, name: string, key: string, databaseUrl: string, upstream: string, dataDir: string }, extra: Record<string, string> = {}): Record<string, string> {
  return {
    OPENROUTER_API_KEY: o.key,
    OPENROUTER_EXTERNAL_USER: o.org,
    ORGANIZATION_NAME: o.name,
    DATABASE_URL: o.databaseUrl,
    OPENROUTER_BASE_URL: o.upstream,
    LOG_LEVEL: 'info',
    LEDGER_FLUSH_MS: '20',
    RECONCILE_MAX_WAIT_MS: '15000',
    DATA_DIR: o.dataDir,
    ...extra,
  }
}

/** `nodeArgs` go before dist/main.js (V8 flags, --require of a preload). */
export function spawnSidecar (env: Record<string, string | undefined>, port: number, nodeArgs: string[] = []): Child {
  const proc = spawn(process.execPath, [...nodeArgs, MAIN], {
    cwd: cleanCwd(),
    env: childEnv({ ...env, PORT: String(port), HOST: '127.0.0.1' }),
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  proc.stdout!.on('data', (c) => { out += c })
  proc.stderr!.on('data', (c) => { out += c })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((r) => proc.once('exit', (code, signal) => r({ code, signal })))
  const url = `http://127.0.0.1:${port}`
  return {
    proc,
    url,
    logs: () => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)),
    exited,
    async waitReady (timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs
      while (Date.now() < deadline) {
        if (proc.exitCode !== null) throw new Error(`sidecar exited ${proc.exitCode}: ${out}`)
        try {
          const r = await request(`${url}/readyz`)
          await r.body.dump()
          if (r.statusCode === 200) return
        } catch { /* not listening yet */ }
        await new Promise((r) => setTimeout(r, 50))
      }
      throw new Error(`sidecar not ready in ${timeoutMs} ms: ${out}`)
    },
  }
}

