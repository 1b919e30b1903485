import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Logger } from '../lib/log.js'
import type { UsageRecord } from '../usage/ledger/record.js'
import type { RouteClass } from '../ops/metrics.js'

// One line and one count per exchange, whoever answered it: OpenRouter through the metered path
// or passthrough, or the sidecar itself (401 wrong key, 400, 404, 413, 503 not ready). A wrong
// key in the chat app is then a visible storm of 401s, not silence. The server calls `begin` as a
// request arrives; the metered path hands over its record (model, user, generation) once it is
// built, which for a client that left early is after the socket closed.

export interface AccessLogOptions {
  log: Logger
  /** ACCESS_LOG=on: a line per exchange. Off: only metered 5xx (upstream unreachable/timeout). */
  enabled: boolean
  count?: (routeClass: RouteClass, status: number) => void
}

export interface AccessLog {
  begin: (req: IncomingMessage, res: ServerResponse) => void
  /** The metered path's record of this exchange. */
  record: (res: ServerResponse, rec: UsageRecord) => void
}

interface Pending { req: IncomingMessage, url: string, started: bigint, routeClass: RouteClass, closed: boolean, rec: UsageRecord | null }

export function routeClassOf (method: string | undefined, url: string): RouteClass {
  if (url.startsWith('/v1/') || url.startsWith('/api/v1/')) return method === 'GET' || method === 'HEAD' ? 'passthrough' : 'metered'
  const path = url.split('?')[0]
  if (path === '/healthz' || path === '/readyz' || path === '/metrics') return 'probe'
  if (path === '/admin' || path.startsWith('/admin/')) return 'admin'
  return 'other'
}

export function createAccessLog (o: AccessLogOptions): AccessLog {
  const open = new WeakMap<ServerResponse, Pending>()
  // The line holds only the fields picked below, none of them secret: the redaction pass the
  // main logger runs on every object (wildcard paths) would double the cost of each line.
  const out = o.log.child({}, { redact: { paths: [] } })

  const emit = (res: ServerResponse, p: Pending): void => {
    open.delete(res)
    const rec = p.rec
    // A client that left before any header was sent saw nothing: 499, as the ledger records it.
    const status = rec?.status || (res.headersSent ? res.statusCode : 499)
    try { o.count?.(p.routeClass, status) } catch { /* metrics never break an exchange */ }
    if (p.routeClass === 'probe' && status < 400) return // health checks every few seconds are noise
    const upstreamFailed = rec !== null && (status === 502 || status === 504)
    if (!o.enabled && !upstreamFailed) return
    if (status < 500 && !out.isLevelEnabled('info')) return // LOG_LEVEL=warn: skip building the line
    const line = {
      status,
      method: p.req.method,
      endpoint: p.url.split('?')[0],
      route: p.routeClass,
      model: rec?.model ?? undefined,
      // The id the chat app sent: the one an operator is asked about. The external id is what
      // OpenRouter saw (the organization's own when the request named no user).
      user: rec?.userId ?? undefined,
      externalUser: rec?.externalUserId ?? undefined,
      generationId: rec?.generationId ?? undefined,
      outcome: rec?.outcome ?? undefined,
      kind: rec?.kind ?? undefined,
      durationMs: Number((process.hrtime.bigint() - p.started) / 1000n) / 1000,
      ttfbMs: rec?.ttfbMs ?? undefined,
      error: upstreamFailed ? rec.errorMessage ?? undefined : undefined,
    }
    // /readyz answers 503 while boot reaches the database, and orchestrators ask every few
    // seconds: expected, not a warning.
    if (status === 503 && line.endpoint === '/readyz') out.debug(line, 'access')
    else if (status >= 500) out.warn(line, 'access')
    else out.info(line, 'access')
  }

  return {
    begin (req, res) {
      const p: Pending = { req, url: req.url ?? '/', started: process.hrtime.bigint(), routeClass: routeClassOf(req.method, req.url ?? '/'), closed: false, rec: null }
      open.set(res, p)
      res.once('close', () => {
        p.closed = true
        // A metered request whose body arrived was dispatched (or answered by the sidecar, which
        // finishes the response): if it has no record yet, its client left and the record follows.
        const recordFollows = p.routeClass === 'metered' && p.rec === null && !res.writableFinished && req.complete
        if (!recordFollows) emit(res, p)
      })
    },
    record (res, rec) {
      const p = open.get(res)
      if (!p) return
      p.rec = rec
      if (p.closed) emit(res, p)
    },
  }
}
