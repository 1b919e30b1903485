import type { IncomingMessage, ServerResponse } from 'node:http'
import { createHash, timingSafeEqual } from 'node:crypto'
import type { Logger } from '../lib/log.js'
import { sendError } from '../lib/errors.js'
import { actorOf } from '../audit/audit.js'
import { adminGroupId } from '../identity/groups.js'

// The admin plane (/admin/v1/* and the /admin/ page): one key, one tiny router. It is mounted by
// the server only when ADMIN_API_KEY is set; the data plane under /v1 never reaches it.

export interface AdminRequest {
  req: IncomingMessage
  res: ServerResponse
  /** Named groups of the route's pattern, decoded. */
  params: Record<string, string>
  url: URL
  /** Who is calling, for the audit trail: a fingerprint of the credential (src/audit/audit.ts). */
  actor: string
}

export interface AdminRoute {
  method: 'GET' | 'PUT' | 'POST' | 'DELETE'
  /** Matched against the path alone, e.g. /^\/admin\/v1\/budgets\/users\/(?<userId>[^/]+)$/. */
  path: RegExp
  /** Routes that serve the sign-in page and its assets set this; everything else needs the key. */
  public?: boolean
  handle: (r: AdminRequest) => void | Promise<void>
}

export type AdminHandler = (req: IncomingMessage, res: ServerResponse) => void

/** Cookie that carries the admin key for the browser page (HttpOnly, SameSite=Strict). */
export const ADMIN_COOKIE = 'usage_proxy_admin'

export function createAdmin (apiKey: string, routes: AdminRoute[], log: Logger): AdminHandler {
  const expected = digest(apiKey)
  const authorized = (req: IncomingMessage): boolean => {
    const given = bearer(req.headers.authorization) ?? cookie(req.headers.cookie, ADMIN_COOKIE)
    // Compare digests: constant time whatever the length of what the client sent.
    return given !== null && timingSafeEqual(digest(given), expected)
  }
  return (req, res) => {
    const url = new URL(req.url ?? '/', 'http://admin.invalid')
    let pathMatched = false
    let pathPublic = false
    for (const route of routes) {
      const m = route.path.exec(url.pathname)
      if (!m) continue
      pathMatched = true
      pathPublic ||= route.public === true
      if (route.method !== req.method) continue
      if (!route.public && !authorized(req)) {
        req.resume()
        return sendError(res, 401, 'authentication_error', 'invalid_admin_key', 'missing or wrong admin key (Authorization: Bearer <ADMIN_API_KEY>)')
      }
      const params: Record<string, string> = {}
      for (const [k, v] of Object.entries(m.groups ?? {})) {
        // Postgres text cannot hold NUL: refused here, or the query would fail as a 500.
        let decoded: string
        try { decoded = decodeURIComponent(v) } catch { return sendError(res, 400, 'invalid_request_error', 'invalid_path', `malformed ${k} in path`) }
        if (decoded.includes('\u0000')) return sendError(res, 400, 'invalid_request_error', 'invalid_path', `malformed ${k} in path`)
        // A group id is read as the request's group header is (identity/groups.ts), so the budget
        // or list set on it binds the group its members are in.
        if (k === 'groupId') {
          const g = adminGroupId(decoded)
          if ('error' in g) return sendError(res, 400, 'invalid_request_error', 'invalid_path', g.error)
          decoded = g.id
        }
        params[k] = decoded
      }
      // An admin call that fails answers that call; it never reaches the process.
      const fromHeader = bearer(req.headers.authorization)
      const actor = fromHeader !== null
        ? actorOf('admin-key', fromHeader)
        : actorOf('session', cookie(req.headers.cookie, ADMIN_COOKIE) ?? '')
      Promise.resolve()
        .then(() => route.handle({ req, res, params, url, actor }))
        .catch((err: unknown) => {
          log.error({ err: err instanceof Error ? err.message : String(err), path: url.pathname }, 'admin: request failed')
          sendError(res, 500, 'api_error', 'internal_error', 'the admin request failed; see the sidecar log')
        })
      return
    }
    req.resume()
    // Without the key, a wrong method on a key-only path is told 401 like any other call: which
    // methods a path takes is not for anonymous callers to learn.
    if (pathMatched && (pathPublic || authorized(req))) return sendError(res, 405, 'invalid_request_error', 'method_not_allowed', `${req.method} is not allowed on ${url.pathname}`)
    if (!authorized(req)) return sendError(res, 401, 'authentication_error', 'invalid_admin_key', 'missing or wrong admin key (Authorization: Bearer <ADMIN_API_KEY>)')
    return sendError(res, 404, 'not_found_error', 'not_found', `no admin route for ${req.method} ${url.pathname}`)
  }
}

export function sendJson (res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' })
  res.end(body)
}

function bearer (h: string | undefined): string | null {
  return typeof h === 'string' && h.startsWith('Bearer ') ? h.slice(7) : null
}

function cookie (h: string | undefined, name: string): string | null {
  if (!h) return null
  for (const part of h.split(';')) {
    const eq = part.indexOf('=')
    if (eq !== -1 && part.slice(0, eq).trim() === name) {
      try { return decodeURIComponent(part.slice(eq + 1).trim()) } catch { return null }
    }
  }
  return null
}

function digest (s: string): Buffer { return createHash('sha256').update(s).digest() }
