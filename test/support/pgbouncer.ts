import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { chmodSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from './child.js'

// Debian's PgBouncer (`apt-get install pgbouncer`; .ci/run installs it) as a child process in
// front of the test Postgres: its own ini in a temp dir, an ephemeral port, no unix socket and
// no daemon. PgBouncer refuses to run as root, so as root it is started with `-u postgres` (or
// `-u nobody`), which is why its directory is world-readable.

export interface Bouncer {
  /** DATABASE_URL through the pooler, to the given database. */
  url: (database: string) => string
  port: number
  /** Kills it (SIGKILL: every client connection drops at once) and waits for the exit. */
  kill: () => Promise<void>
  /** Starts it again on the same port and ini. */
  start: () => Promise<void>
  /** Backends PgBouncer holds open to Postgres now (SHOW POOLS on its admin console). */
  log: () => string
}

const CANDIDATES = ['/usr/sbin/pgbouncer', '/usr/bin/pgbouncer', '/usr/local/bin/pgbouncer']

/** The binary, or why there is none (the test's skip reason). */
export function pgbouncerBinary (): { path: string } | { missing: string } {
  for (const p of CANDIDATES) if (existsSync(p)) return { path: p }
  const which = spawnSync('sh', ['-c', 'command -v pgbouncer'], { encoding: 'utf8' })
  if (which.status === 0 && which.stdout.trim()) return { path: which.stdout.trim() }
  return { missing: 'pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)' }
}

function runAsUser (): string[] {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return []
  for (const user of ['postgres', 'nobody']) {
    if (spawnSync('id', ['-u', user]).status === 0) return ['-u', user]
  }
  return []
}

export async function startPgbouncer (o: { postgresPort: number, mode: 'transaction' | 'session' | 'statement', poolSize?: number, maxClients?: number }): Promise<Bouncer> {
  const bin = pgbouncerBinary()
  if (!('path' in bin)) throw new Error(bin.missing)
  const dir = mkdtempSync(join(tmpdir(), 'pgbouncer-'))
  chmodSync(dir, 0o755)
  const port = await freePort()
  writeFileSync(join(dir, 'users.txt'), '"postgres" ""\n')
  writeFileSync(join(dir, 'pgbouncer.ini'), [
    '[databases]',
    `* = host=127.0.0.1 port=${o.postgresPort}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    'unix_socket_dir =',
    'auth_type = trust',
    `auth_file = ${join(dir, 'users.txt')}`,
    'admin_users = postgres',
    `pool_mode = ${o.mode}`,
    `default_pool_size = ${o.poolSize ?? 10}`,
    `max_client_conn = ${o.maxClients ?? 1000}`,
    'server_reset_query = DISCARD ALL',
    'log_connections = 0',
    'log_disconnections = 0',
    '',
  ].join('\n'))
  chmodSync(join(dir, 'users.txt'), 0o644)
  chmodSync(join(dir, 'pgbouncer.ini'), 0o644)
  let proc: ChildProcess | null = null
  let output = ''
  const start = async (): Promise<void> => {
    proc = spawn(bin.path, [...runAsUser(), join(dir, 'pgbouncer.ini')], { stdio: ['ignore', 'pipe', 'pipe'] })
    const p = proc
    await new Promise<void>((resolve, reject) => {
      const seen = (chunk: Buffer): void => {
        output += chunk.toString('utf8')
        if (output.includes(`listening on 127.0.0.1:${port}`)) resolve()
      }
      p.stdout!.on('data', seen)
      p.stderr!.on('data', seen)
      p.once('exit', (code) => reject(new Error(`pgbouncer exited (${code}) before listening:\n${output}`)))
    })
  }
  const kill = async (): Promise<void> => {
    const p = proc
    if (!p || p.exitCode !== null || p.signalCode !== null) return
    const exited = new Promise((r) => p.once('exit', r))
    p.kill('SIGKILL')
    await exited
    output = ''
  }
  await start()
  return { url: (db) => `postgres://postgres@127.0.0.1:${port}/${db}`, port, kill, start, log: () => output }
}
