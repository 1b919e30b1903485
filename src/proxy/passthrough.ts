import type { IncomingMessage, ServerResponse } from 'node:http'
import { pipeline } from 'node:stream'
import { Pool } from 'undici'
import type { Logger } from '../lib/log.js'
import { sendError } from '../lib/errors.js'
import { upstreamHeaders, type UpstreamHeaderPolicy } from './headers.js'

// The few GET endpoints a client needs to choose a model go through unchanged, with the
// organization's key in place of whatever the client sent. Everything else that reads the
// account (/credits, /key, /keys, /activity, /generation, ...) stays closed: README.md says
// why each allowed path is harmless. Sent with undici and our own header rewrite: http-proxy
// skipped its rewrite hook whenever the request carried `Expect`, letting credentials through.

export interface Passthrough { handle: (req: IncomingMessage, res: ServerResponse, rest: string) => void, close: () => void }

const ALLOWED = new Set(['models', 'models/count', 'models/user', 'embeddings/models', 'providers'])
/** /models/{author}/{slug}/endpoints: one model's providers, prices and limits. */
const MODEL_ENDPOINTS = /^models\/[A-Za-z0-9._~:-]+\/[A-Za-z0-9._~:-]+\/endpoints$/
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade'])
const TIMEOUT_MS = 120_000

/** Is this endpoint (path under /v1, no leading slash, no query) one the passthrough serves? */
export function passesThrough (endpoint: string): boolean {
  return ALLOWED.has(endpoint) || MODEL_ENDPOINTS.test(endpoint)
}

export function createPassthrough (baseUrl: string, apiKey: string, appUrl: string | undefined, appTitle: string, identityHeaders: Set<string>, log: Logger): Passthrough {
  const policy: UpstreamHeaderPolicy = { apiKey, appUrl, appTitle, identityHeaders }
  const target = new URL(baseUrl)
  const basePath = target.pathname.replace(/\/+$/, '')
  const pool = new Pool(target.origin, { connections: 32, keepAliveTimeout: 30_000, headersTimeout: TIMEOUT_MS, bodyTimeout: TIMEOUT_MS })

  const failed = (res: ServerResponse, err: Error): void => {
    log.warn({ err: err.message }, 'passthrough: upstream error')
    if (!res.headersSent) sendError(res, 502, 'upstream_error', 'upstream_unreachable', 'OpenRouter could not be reached')
    else res.destroy()
  }

  return {
    handle (req, res, rest) {
      // A GET has no meaningful body: what the client sent is discarded, none goes up.
      req.resume()
      const method = req.method === 'HEAD' ? 'HEAD' : 'GET'
      const ac = new AbortController()
      res.once('close', () => { if (!res.writableFinished) ac.abort() })
      pool.request({ method, path: basePath + rest, headers: upstreamHeaders(req.headers, policy, 'client'), signal: ac.signal })
        .then((up) => {
          if (ac.signal.aborted) { up.body.destroy(); return }
          res.writeHead(up.statusCode, responseHeaders(up.headers))
          pipeline(up.body, res, (err) => { if (err && !ac.signal.aborted) failed(res, err) })
        }, (err: Error) => { if (!ac.signal.aborted) failed(res, err) })
    },
    close () { void pool.destroy().catch(() => {}) },
  }
}

function responseHeaders (headers: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  const connection = headers.connection
  const named = new Set(typeof connection === 'string' ? connection.split(',').map((s) => s.trim().toLowerCase()) : [])
  const out: Record<string, string | string[]> = {}
  for (const name in headers) {
    const v = headers[name]
    if (v === undefined || HOP_BY_HOP.has(name) || named.has(name)) continue
    out[name] = v
  }
  return out
}
