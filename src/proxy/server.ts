import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { answerClientErrors } from './client-errors.js'
import { timingSafeEqual, createHash } from 'node:crypto'
import { sendError } from '../lib/errors.js'
import { handleMetered, meteredBodyFormat, type MeterContext } from './metered.js'
import type { Logger } from '../lib/log.js'
import { passesThrough, type Passthrough } from './passthrough.js'
import { limitConnections, type ConnectionLimits } from './connection-limits.js'
import { claimsApiKey } from '../keys/secret.js'
import type { KeyCheck, KeyRefusal } from '../keys/ring.js'
import type { ApiKey } from '../keys/store.js'

// Routing, access and readiness. The data plane lives under /v1/ (the app's OpenAI base URL) and
// /api/v1/ (OpenRouter's own layout); the rest of the path is appended to OPENROUTER_BASE_URL.
// A request is let in by PROXY_API_KEY (the chat app's key), or by an API key made through the
// admin API (`upk_...`, src/keys): such a key is always checked, even when PROXY_API_KEY is unset
// and any other key is accepted, so a revoked or expired key never works anywhere.

export interface ServerContext {
  log: Logger
  passthrough: Passthrough
  proxyApiKey: string | undefined
  /** What answers the routes that need the database: null while booting and once stopping (503). */
  plane: () => DataPlane | null
  /** ADMIN_API_KEY is set: /admin is a route (503 until the plane is up); without it, 404. */
  adminEnabled: boolean
  /** Slow or endless clients are cut off: all headers within the first, the whole request within the second. */
  clientTimeouts: { headersMs: number, requestMs: number }
  metrics?: (req: IncomingMessage, res: ServerResponse) => void
  onPassthrough?: (status: number) => void
  /** MAX_CONNECTIONS and MAX_CONNECTIONS_PER_IP; unbounded when absent. */
  connections?: ConnectionLimits
  /** Called as each request arrives, before routing: the access log and the responses counter. */
  onExchange?: (req: IncomingMessage, res: ServerResponse) => void
}

/** The routes built from what boot opened. */
export interface DataPlane {
  meter: MeterContext
  /** The admin plane (/admin/...), present when ADMIN_API_KEY is set. */
  admin?: (req: IncomingMessage, res: ServerResponse) => void
  /**
   * GET /v1/models as the caller may use it (model allowlists), with the virtual "My usage" model
   * appended (SELF_SERVICE_MODEL); calls `passthrough` when neither changes the list. `key`: the
   * API key it was asked with.
   */
  models?: (req: IncomingMessage, res: ServerResponse, endpoint: string, query: string, passthrough: () => void, key: ApiKey | null) => void
  /** The organization's API keys (src/keys/ring.ts). */
  keys?: { check: (secret: string) => KeyCheck | Promise<KeyCheck> }
}

/** The GET endpoints that answer a list of models: each is filtered by the caller's allowlists. */
const MODEL_LISTS = new Set(['models', 'models/user', 'embeddings/models'])

export function createProxyServer (ctx: ServerContext): Server {
  const keyDigest = ctx.proxyApiKey ? digest(`Bearer ${ctx.proxyApiKey}`) : null
  const { headersMs, requestMs } = ctx.clientTimeouts
  const server = createServer({
    headersTimeout: headersMs,
    requestTimeout: requestMs,
    // Node checks those timeouts every 30 s by default, which would double a short one.
    connectionsCheckingInterval: Math.min(1000, Math.ceil(headersMs / 2)),
    keepAliveTimeout: 65_000,
  }, (req, res) => {
    // A bug that throws while routing costs this exchange a 500, never the process.
    try { ctx.onExchange?.(req, res); route(req, res) } catch (err) { internalError(req, res, err) }
  })
  if (ctx.connections) limitConnections(server, ctx.connections)
  answerClientErrors(server)

  function internalError (req: IncomingMessage, res: ServerResponse, err: unknown): void {
    ctx.log.error({ err: err instanceof Error ? `${err.name}: ${err.message}` : String(err), method: req.method, path: (req.url ?? '').split('?')[0] },
      'request handling failed')
    try {
      req.resume()
      sendError(res, 500, 'api_error', 'internal_error', 'usage-proxy failed to handle this request')
    } catch { res.destroy() }
  }

  function route (req: IncomingMessage, res: ServerResponse): void {
    const url = req.url ?? '/'
    let rest: string
    if (url.startsWith('/v1/')) rest = url.slice(3)
    else if (url.startsWith('/api/v1/')) rest = url.slice(7)
    else {
      if (url === '/healthz') return plain(res, 200, '{"status":"ok"}')
      if (url === '/readyz') return ctx.plane() ? plain(res, 200, '{"status":"ready"}') : plain(res, 503, '{"status":"starting"}')
      if (url === '/metrics' && ctx.metrics) return ctx.metrics(req, res)
      if ((url === '/admin' || url.startsWith('/admin/') || url.startsWith('/admin?')) && ctx.adminEnabled) {
        const admin = ctx.plane()?.admin
        if (!admin) return notReady(res)
        return admin(req, res)
      }
      return sendError(res, 404, 'not_found_error', 'not_found', `no route for ${req.method} ${url.split('?')[0]}: the API lives under /v1/`)
    }
    const plane = ctx.plane()
    if (!plane) return notReady(res)
    const given = req.headers.authorization ?? anthropicKey(req, rest)
    // Compare digests: constant time whatever the length of what the client sent.
    if (keyDigest && typeof given === 'string' && timingSafeEqual(digest(given), keyDigest)) return serve(req, res, plane, rest, null)
    const secret = bearerToken(given)
    if (secret !== null && claimsApiKey(secret) && plane.keys) {
      const checked = plane.keys.check(secret)
      if (!(checked instanceof Promise)) return admitKey(req, res, plane, rest, checked)
      checked.then((c) => admitKey(req, res, plane, rest, c)).catch((err: unknown) => internalError(req, res, err))
      return
    }
    // Not a byte of the body is read, and the connection closes once this is sent: an
    // unauthenticated client cannot hold a socket by trickling a body.
    if (keyDigest) return sendError(res, 401, 'authentication_error', 'invalid_api_key', 'missing or wrong API key for usage-proxy', { connection: 'close' })
    return serve(req, res, plane, rest, null)
  }

  function admitKey (req: IncomingMessage, res: ServerResponse, plane: DataPlane, rest: string, c: KeyCheck): void {
    if ('key' in c) return serve(req, res, plane, rest, c.key)
    if (c.refused === 'unavailable') {
      req.resume()
      return sendError(res, 503, 'service_unavailable', 'key_check_unavailable', 'usage-proxy cannot check API keys right now; try again in a moment', { 'retry-after': '1' })
    }
    return sendError(res, 401, 'authentication_error', 'invalid_api_key', KEY_REFUSALS[c.refused], { connection: 'close' })
  }

  function serve (req: IncomingMessage, res: ServerResponse, plane: DataPlane, rest: string, key: ApiKey | null): void {
    const q = rest.indexOf('?')
    const query = q === -1 ? '' : rest.slice(q)
    // One spelling per endpoint: "chat/completions/" is chat/completions; dot segments, empty
    // segments, backslashes (which some servers read as slashes) and encoded slashes, dots or
    // backslashes are refused rather than guessed at.
    const endpoint = (q === -1 ? rest : rest.slice(0, q)).slice(1).replace(/\/+$/, '')
    if (/(^|\/)\.{1,2}(\/|$)|\/\/|\\|%2f|%2e|%5c/i.test(endpoint)) {
      req.resume()
      return sendError(res, 404, 'not_found_error', 'not_found', 'malformed path')
    }
    if (req.method === 'GET' || req.method === 'HEAD') {
      if (!passesThrough(endpoint)) {
        req.resume()
        return sendError(res, 404, 'not_found_error', 'not_found',
          `usage-proxy passes through only the model catalogue (GET /models, /providers, ...); GET /${endpoint} is not forwarded`)
      }
      if (ctx.onPassthrough) res.once('finish', () => ctx.onPassthrough!(res.statusCode))
      // Every catalogue that lists models goes through the caller's allowlists, not just /models.
      if (req.method === 'GET' && MODEL_LISTS.has(endpoint) && plane.models) return plane.models(req, res, endpoint, query, () => ctx.passthrough.handle(req, res, `/${endpoint}${query}`), key)
      return ctx.passthrough.handle(req, res, `/${endpoint}${query}`)
    }
    const format = req.method === 'POST' ? meteredBodyFormat(endpoint) : null
    if (format) return handleMetered(req, res, endpoint, query, format, plane.meter, key)
    // Anything else could spend the organization's key without a record: refuse it.
    req.resume()
    return sendError(res, 404, 'not_found_error', 'not_metered',
      `usage-proxy forwards GET requests and the inference endpoints it meters; ${req.method} /${endpoint} is neither`)
  }

  return server
}

const KEY_REFUSALS: Record<Exclude<KeyRefusal, 'unavailable'>, string> = {
  unknown: 'unknown API key for usage-proxy',
  revoked: 'this API key was revoked',
  expired: 'this API key has expired',
}

/** The credential of `Authorization: Bearer <credential>`, or null. */
function bearerToken (given: string | undefined): string | null {
  return typeof given === 'string' && /^bearer /i.test(given) ? given.slice(7).trim() : null
}

/** The Anthropic SDK sends its key as `x-api-key`: accepted as the proxy key on /messages only. */
function anthropicKey (req: IncomingMessage, rest: string): string | undefined {
  const key = req.headers['x-api-key']
  return typeof key === 'string' && /^\/messages\/?(\?|$)/.test(rest) ? `Bearer ${key}` : undefined
}

function notReady (res: ServerResponse): void {
  sendError(res, 503, 'service_unavailable', 'not_ready', 'usage-proxy is starting', { 'retry-after': '1' })
}

function plain (res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': body.length, 'cache-control': 'no-store' })
  res.end(body)
}

function digest (s: string): Buffer { return createHash('sha256').update(s).digest() }
