import t from 'tap'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import { createLogger } from '../src/lib/log.js'
import { connect } from '../src/db/connect.js'
import { StartupError } from '../src/lib/startup-error.js'
import { ADMIN_URL, realServerAvailable } from './support/db.js'
import { LogSink } from './support/log-sink.js'
import { TEST_KEY } from './support/test-key.js'
import { MAIN, spawnNode } from './support/child.js'
import { blankEmbeddedDataDir } from './support/pglite-dir.js'

// Start-up failures that no retry can fix end the start at once, with one line naming the
// variable to change; no stack trace.

const base = { OPENROUTER_API_KEY: TEST_KEY, OPENROUTER_EXTERNAL_USER: 'mai_client_startup', ORGANIZATION_NAME: 'Startup', HOST: '127.0.0.1', PORT: '0', LOG_LEVEL: 'silent' }

async function run (env: Record<string, string>): Promise<{ code: number | null, stderr: string }> {
  const child = spawnNode([MAIN], env)
  let stderr = ''
  child.stderr!.on('data', (c: Buffer) => { stderr += c.toString() })
  child.stdout!.resume()
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  return { code, stderr }
}

async function taken (): Promise<{ port: number, close: () => void }> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  return { port: (s.address() as AddressInfo).port, close: () => s.close() }
}

t.test('a taken EMBEDDED_DB_PORT is named', async (t) => {
  const blocker = await taken()
  t.teardown(blocker.close)
  const { mkdtempSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  // The embedded database opens its data directory before it listens: on an empty DATA_DIR that
  // is PGlite's initdb, seconds of WASM work this test is not about. It finds one (blank) instead.
  const dataDir = mkdtempSync(join(tmpdir(), 'startup-'))
  await blankEmbeddedDataDir(dataDir)
  const r = await run({ ...base, EMBEDDED_DB_PORT: String(blocker.port), DATA_DIR: dataDir })
  t.equal(r.code, 1)
  t.match(r.stderr, new RegExp(`^usage-proxy: EMBEDDED_DB_PORT: port ${blocker.port} on 127\\.0\\.0\\.1 is already in use.*set EMBEDDED_DB_PORT to a free port`))
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
})

/**
 * A Postgres that refuses every login with the given SQLSTATE, as the real server does: an
 * ErrorResponse (severity FATAL, code, message) in answer to the startup message, then close.
 */
async function refusingPostgres (code: string, message: string): Promise<{ port: number, close: () => void }> {
  const field = (tag: string, v: string): Buffer => Buffer.concat([Buffer.from(tag), Buffer.from(v + '\0')])
  const fields = Buffer.concat([field('S', 'FATAL'), field('V', 'FATAL'), field('C', code), field('M', message), Buffer.from([0])])
  const len = Buffer.alloc(4)
  len.writeInt32BE(fields.length + 4)
  const reply = Buffer.concat([Buffer.from('E'), len, fields])
  const s = createServer((socket) => { socket.once('data', () => socket.end(reply)); socket.on('error', () => {}) })
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  return { port: (s.address() as AddressInfo).port, close: () => s.close() }
}

t.test('wrong Postgres user or database: fail fast naming DATABASE_URL, no retries', async (t) => {
  const urls: Array<[string, string]> = []
  for (const [code, message] of [['28P01', 'password authentication failed for user "usage"'], ['28000', 'role "nobody" does not exist'], ['3D000', 'database "nope" does not exist']]) {
    const pg = await refusingPostgres(code, message)
    t.teardown(pg.close)
    urls.push([`postgres://usage:hunter2-secret@127.0.0.1:${pg.port}/nope`, code])
  }
  if (await realServerAvailable()) {
    // and the real server says the same
    const u = new URL(ADMIN_URL)
    const noRole = new URL(u); noRole.username = 'no_such_role_usage_proxy'
    const noDb = new URL(u); noDb.pathname = '/no_such_database_usage_proxy'
    urls.push([noRole.toString(), '28000'], [noDb.toString(), '3D000'])
  }
  for (const [url, code] of urls) {
    const sink = new LogSink()
    const err = await connect({ url, log: createLogger('debug', sink), retryMaxMs: 50 }).then(() => null, (e: unknown) => e)
    t.type(err, StartupError, `${code}: a StartupError`)
    t.match((err as Error).message, new RegExp(`^DATABASE_URL: .*\\(${code}`), `${code}: names DATABASE_URL and the SQLSTATE`)
    t.notMatch((err as Error).message, /hunter2/, 'the password stays out')
    t.notMatch(sink.text, /retrying/, `${code}: not retried`)
  }
  const r = await run({ ...base, DATABASE_URL: urls[2][0] })
  t.equal(r.code, 1, 'the process exits 1')
  t.match(r.stderr, /^usage-proxy: DATABASE_URL: .*3D000/)
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
})

t.test('a password in DATABASE_URL stays out of the message', async (t) => {
  const { unfixableByRetry } = await import('../src/db/connect.js')
  const err = unfixableByRetry({ code: '28P01', message: 'password authentication failed for user "u"' }, 'postgres://u:hunter2-secret@db:5432/x')
  t.match(err?.message, /postgres:\/\/u:\*\*\*@db:5432\/x/)
  t.notMatch(err?.message, /hunter2/)
  t.equal(unfixableByRetry({ code: '08006', message: 'connection failure' }, 'postgres://db/x'), null, 'a connection failure is retried')
})
