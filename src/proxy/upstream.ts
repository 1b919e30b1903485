import { Pool } from 'undici'

// One keep-alive pool to OpenRouter for the whole process; the metered path dispatches on it
// directly and the reconciler reads /generation through it.

export interface Upstream {
  pool: Pool
  /** Path prefix of OPENROUTER_BASE_URL, e.g. "/api/v1". */
  basePath: string
  origin: string
  fetchGeneration: (id: string) => Promise<{ status: number, body: string }>
  /** GET /key: the organization key's limit and usage, for the credit-balance gauge. */
  fetchKey: () => Promise<{ status: number, body: string }>
  close: () => Promise<void>
}

export interface UpstreamOptions { baseUrl: string, apiKey: string, connections: number, headersTimeoutMs: number, bodyTimeoutMs: number }

export function createUpstream (o: UpstreamOptions): Upstream {
  const url = new URL(o.baseUrl)
  const basePath = url.pathname.replace(/\/+$/, '')
  const pool = new Pool(url.origin, {
    connections: o.connections,
    pipelining: 1,
    keepAliveTimeout: 30_000,
    headersTimeout: o.headersTimeoutMs,
    bodyTimeout: o.bodyTimeoutMs,
    connect: { timeout: 10_000 },
  })
  const authorization = `Bearer ${o.apiKey}`
  return {
    pool,
    basePath,
    origin: url.origin,
    async fetchGeneration (id) {
      const res = await pool.request({
        method: 'GET',
        path: `${basePath}/generation?id=${encodeURIComponent(id)}`,
        headers: { authorization, accept: 'application/json' },
        headersTimeout: 15_000,
        bodyTimeout: 15_000,
      })
      return { status: res.statusCode, body: await res.body.text() }
    },
    async fetchKey () {
      const res = await pool.request({
        method: 'GET', path: `${basePath}/key`, headers: { authorization, accept: 'application/json' },
        headersTimeout: 15_000, bodyTimeout: 15_000,
      })
      return { status: res.statusCode, body: await res.body.text() }
    },
    close: () => pool.close(),
  }
}
