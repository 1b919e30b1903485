import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createLogger } from '../../src/lib/log.js'
import { start, type Sidecar, type StartOptions } from '../../src/main.js'
import type { FakeOpenRouter } from './fake-openrouter.js'
import { LogSink } from './log-sink.js'
import { TEST_KEY } from './test-key.js'

export { LogSink, TEST_KEY }

export interface Started { sidecar: Sidecar, logs: LogSink, url: string, dataDir: string }

export function baseEnv (fake: FakeOpenRouter, databaseUrl: string | undefined, extra: Record<string, string> = {}): Record<string, string | undefined> {
  return {
    OPENROUTER_API_KEY: TEST_KEY,
    OPENROUTER_EXTERNAL_USER: 'mai_client_63a4eb6d',
    ORGANIZATION_NAME: 'Acme GmbH',
    DATABASE_URL: databaseUrl,
    OPENROUTER_BASE_URL: fake.baseUrl,
    PORT: '0',
    HOST: '127.0.0.1',
    MARKUP_PERCENT: '12.5',
    LOG_LEVEL: 'debug',
    LEDGER_FLUSH_MS: '10',
    RECONCILE_MAX_WAIT_MS: '5000',
    DATA_DIR: mkdtempSync(join(tmpdir(), 'usage-proxy-')),
    ...extra,
  }
}

export async function startSidecar (env: Record<string, string | undefined>, options?: StartOptions): Promise<Started> {
  const logs = new LogSink()
  const sidecar = await start(env, createLogger(env.LOG_LEVEL ?? 'debug', logs), options)
  await sidecar.ready
  return { sidecar, logs, url: `http://127.0.0.1:${sidecar.port}`, dataDir: env.DATA_DIR! }
}

/** Waits until the ledger has written everything it holds (and nothing is left to reconcile). */
export async function settle (sidecar: Sidecar, sql: import('postgres').Sql<{}>, expectedRows: number, timeoutMs = 10_000): Promise<number> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from usage_events`
    if (n >= expectedRows || Date.now() > deadline) return n
    await new Promise((r) => setTimeout(r, 25))
  }
}
