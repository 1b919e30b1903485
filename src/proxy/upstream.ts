import type { Socket } from 'node:net'
import { Pool, buildConnector } from 'undici'

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
  /** True while any upstream socket has a write the kernel has not taken yet (see BodyMemory). */
  writesPending: () => boolean
}

export interface UpstreamOptions { baseUrl: string, apiKey: string, connections: number, headersTimeoutMs: number, bodyTimeoutMs: number }

export function createUpstream (o: UpstreamOptions): Upstream {
  const url = new URL(o.baseUrl)
  const basePath = url.pathname.replace(/\/+$/, '')
  // Every open socket is known, so that a request body's memory is reused only once no write
  // can still read it.
  const sockets = new Set<Socket>()
  const connector = buildConnector({ timeout: 10_000 })
  const pool = new Pool(url.origin, {
    connections: o.connections,
    pipelining: 1,
    keepAliveTimeout: 30_000,
    headersTimeout: o.headersTimeoutMs,
    bodyTimeout: o.bodyTimeoutMs,
    connect: (opts, done) => connector(opts, (err, socket) => {
      if (socket) {
        sockets.add(socket as Socket)
        socket.once('close', () => sockets.delete(socket as Socket))
      }
      if (err) done(err, null)
      else done(null, socket!)
    }),
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
    writesPending () {
      for (const s of sockets) if (s.writableLength > 0 || s.connecting) return true
      return false
    },
  }
}
