import { Agent as HttpAgent, type IncomingMessage, type ServerResponse } from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import { Readable } from 'node:stream'
import httpProxy from 'http-proxy'
import type { Logger } from '../log.js'
import { sendError } from './errors.js'
import { upstreamHeaders, type UpstreamHeaderPolicy } from './headers.js'

// The few GET endpoints a client needs to choose a model go through unchanged, with the
// organization's key in place of whatever the client sent. Everything else that reads the
// account (/credits, /key, /keys, /activity, /generation, ...) stays closed: README.md says
// why each allowed path is harmless.

export interface Passthrough { handle: (req: IncomingMessage, res: ServerResponse, rest: string) => void, close: () => void }

const ALLOWED = new Set(['models', 'models/count', 'models/user', 'embeddings/models', 'providers'])
/** /models/{author}/{slug}/endpoints: one model's providers, prices and limits. */
const MODEL_ENDPOINTS = /^models\/[A-Za-z0-9._~:-]+\/[A-Za-z0-9._~:-]+\/endpoints$/

/** Is this endpoint (path under /v1, no leading slash, no query) one the passthrough serves? */
export function passesThrough (endpoint: string): boolean {
  return ALLOWED.has(endpoint) || MODEL_ENDPOINTS.test(endpoint)
}

export function createPassthrough (baseUrl: string, apiKey: string, appUrl: string, appTitle: string, identityHeaders: Set<string>, log: Logger): Passthrough {
  const policy: UpstreamHeaderPolicy = { apiKey, appUrl, appTitle, identityHeaders }
  const target = new URL(baseUrl)
  const agent = target.protocol === 'https:' ? new HttpsAgent({ keepAlive: true }) : new HttpAgent({ keepAlive: true })
  const proxy = httpProxy.createProxyServer({ target: baseUrl, changeOrigin: true, agent, xfwd: false, proxyTimeout: 120_000 })
  proxy.on('error', (err, _req, res) => {
    log.warn({ err: err.message }, 'passthrough: upstream error')
    const out = res as ServerResponse
    if (typeof out.writeHead === 'function') sendError(out, 502, 'upstream_error', 'upstream_unreachable', 'OpenRouter could not be reached')
  })
  return {
    handle (req, res, rest) {
      // The headers are rewritten here, not in http-proxy's 'proxyReq' event: http-proxy skips
      // that event when the request carries `Expect`, which let the client's credentials through.
      req.headers = upstreamHeaders(req.headers, policy, 'client')
      req.url = rest // http-proxy appends this to the target's path (/api/v1)
      // A GET has no meaningful body: what the client sent is discarded, an empty one goes up.
      req.resume()
      proxy.web(req, res, { buffer: Readable.from([]) })
    },
    close () { proxy.close(); agent.destroy() },
  }
}
