import { subscribe } from 'node:diagnostics_channel'
import type { Socket } from 'node:net'
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
  /**
   * Whether the write of `body`, a request body this pool is done with, may still read it: its
   * socket has bytes the kernel has not taken yet (see BodyMemory).
   */
  writing: (body: Buffer) => boolean
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
    writing,
  }
}

// The socket each request body went out on, as undici says when it writes the request: the
// one socket whose queue can still hold that body. Process-wide, since the channel is, and
// weakly held: a body no one keeps is forgotten with it.
const sentOn = new WeakMap<object, Socket>()
subscribe('undici:client:sendHeaders', (message) => {
  const { request, socket } = message as { request: { body: unknown }, socket: Socket }
  if (Buffer.isBuffer(request.body)) sentOn.set(request.body, socket)
})

function writing (body: Buffer): boolean {
  const socket = sentOn.get(body)
  // Never written: undici, done with the request, will not write it now.
  if (socket === undefined) return false
  return !socket.closed && (socket.writableLength > 0 || socket.connecting)
}
