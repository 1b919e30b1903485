import type { IncomingMessage, ServerResponse } from 'node:http'
import { request } from 'undici'
import { allowedBy, type Allowlists } from '../budgets/allowlists.js'
import { IdentityError, identify, keyIdentity, type IdentityOptions, type KeyHolder } from '../identity/identify.js'
import type { Logger } from '../lib/log.js'
import { sendError } from '../lib/errors.js'
import { upstreamHeaders, type UpstreamHeaderPolicy } from './headers.js'

// GET /v1/models (and the other lists of models, /models/user and /embeddings/models):
// OpenRouter's list as the caller may use it. A caller whom a model allowlist
// restricts (their groups' lists, their API key's) sees only the models every list allows; the
// virtual "My usage" model (SELF_SERVICE_MODEL) is added for everyone. With neither, the request
// passes through untouched.

export interface ModelsListOptions {
  /** OpenRouter's base URL (its lists are below it), and the same header rewrite as the passthrough (the organization's key). */
  baseUrl: string
  headers: UpstreamHeaderPolicy
  log: Logger
  identity: IdentityOptions
  allowlists?: Allowlists
  /** An entry appended to the list of /models (the "My usage" model). */
  extra?: { id: string }
}

/** `key`: the API key the list was asked with (its groups and models are the caller's). */
export type ModelsHandler = (req: IncomingMessage, res: ServerResponse, endpoint: string, query: string, passthrough: () => void, key?: KeyHolder | null) => void

export function modelsList (o: ModelsListOptions): ModelsHandler {
  return (req, res, endpoint, query, passthrough, key = null) => {
    let keep: ((id: string) => boolean) | null = null
    const decided = (async () => {
      if (!o.allowlists) return
      const who = key ? keyIdentity(req.headers, key, o.identity) : identify(req.headers, undefined, o.identity)
      const rs = await o.allowlists.restrictions(who.groups, who.apiKey?.models ?? null)
      if (rs.length > 0) keep = (id) => allowedBy(rs, id)
    })()
    decided.then(() => {
      const extra = endpoint === 'models' ? o.extra : undefined
      if (keep === null && !extra) return passthrough()
      fetchList(o, req, res, `/${endpoint}${query}`, keep, extra)
    }, (err: unknown) => {
      req.resume()
      if (err instanceof IdentityError) return sendError(res, 401, 'authentication_error', 'invalid_identity', err.message)
      o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'models: model allowlists unavailable')
      sendError(res, 503, 'service_unavailable', 'allowlists_unavailable', 'The models you may use cannot be read right now; please try again in a moment.', { 'retry-after': '5' })
    })
  }
}

function fetchList (o: ModelsListOptions, req: IncomingMessage, res: ServerResponse, path: string, keep: ((id: string) => boolean) | null, extra: { id: string } | undefined): void {
  req.resume()
  // identity: the list is read and rewritten here, so it must arrive uncompressed.
  const headers = upstreamHeaders(req.headers, o.headers, 'identity')
  request(o.baseUrl + path, { headers, headersTimeout: 30_000, bodyTimeout: 30_000 }).then(async (up) => {
    const text = await up.body.text()
    let list: { data?: unknown } | null = null
    try { list = JSON.parse(text) as { data?: unknown } } catch { /* answered as it came, or refused below */ }
    if (up.statusCode !== 200 || list === null || !Array.isArray(list.data)) {
      // A restricted caller never sees an unfiltered list.
      if (keep !== null && up.statusCode === 200) return sendError(res, 502, 'upstream_error', 'upstream_invalid', 'OpenRouter answered a model list usage-proxy cannot read')
      res.writeHead(up.statusCode, { 'content-type': String(up.headers['content-type'] ?? 'application/json') })
      res.end(text)
      return
    }
    let data: unknown[] = list.data
    if (keep !== null) {
      const k = keep
      data = data.filter((m) => typeof (m as { id?: unknown } | null)?.id === 'string' && k((m as { id: string }).id))
    }
    if (extra) data.push(extra)
    list.data = data
    const out = JSON.stringify(list)
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) })
    res.end(out)
  }).catch((err: unknown) => {
    o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'models: upstream error')
    sendError(res, 502, 'upstream_error', 'upstream_unreachable', 'OpenRouter could not be reached')
  })
}
