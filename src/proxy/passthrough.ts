import { Agent as HttpAgent, type IncomingMessage, type ServerResponse } from 'node:http'
import { Agent as HttpsAgent } from 'node:https'
import httpProxy from 'http-proxy'
import type { Logger } from '../log.js'
import { sendError } from './errors.js'

// Everything that is not inference (GET /models, /key, /credits, ...) goes through unchanged,
// with the organization's key in place of whatever the client sent.

export interface Passthrough { handle: (req: IncomingMessage, res: ServerResponse, rest: string) => void, close: () => void }

export function createPassthrough (baseUrl: string, apiKey: string, appUrl: string | undefined, appTitle: string, identityHeaders: Set<string>, log: Logger): Passthrough {
  const drop = new Set(['cookie', 'x-api-key', ...identityHeaders])
  const target = new URL(baseUrl)
  const agent = target.protocol === 'https:' ? new HttpsAgent({ keepAlive: true }) : new HttpAgent({ keepAlive: true })
  const proxy = httpProxy.createProxyServer({ target: baseUrl, changeOrigin: true, agent, xfwd: false, proxyTimeout: 120_000 })
  proxy.on('proxyReq', (proxyReq) => {
    for (const name of proxyReq.getHeaderNames()) {
      if (name.startsWith('x-openwebui-') || drop.has(name)) proxyReq.removeHeader(name)
    }
    proxyReq.setHeader('authorization', `Bearer ${apiKey}`)
    if (appUrl) proxyReq.setHeader('http-referer', appUrl)
    proxyReq.setHeader('x-title', appTitle)
  })
  proxy.on('error', (err, _req, res) => {
    log.warn({ err: err.message }, 'passthrough: upstream error')
    const out = res as ServerResponse
    if (typeof out.writeHead === 'function') sendError(out, 502, 'upstream_error', 'upstream_unreachable', 'OpenRouter could not be reached')
  })
  return {
    handle (req, res, rest) {
      req.url = rest // http-proxy appends this to the target's path (/api/v1)
      proxy.web(req, res)
    },
    close () { proxy.close(); agent.destroy() },
  }
}
