import { createHash, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { sendError } from '../lib/errors.js'
import { readText } from '../lib/read-body.js'
import { ADMIN_COOKIE, type AdminRoute } from './router.js'

// Sign-in for the /admin/ page: the key goes once in a POST body and comes back as an HttpOnly,
// SameSite=Strict cookie scoped to /admin, so page scripts never hold it and it is never in a URL.

const COOKIE_ATTRS = 'HttpOnly; SameSite=Strict; Path=/admin'
const MAX_BODY = 4096
// Wrong keys from one address: past this many in a window, sign-in answers 429 until it ends.
const FAILURES_PER_WINDOW = 10
const FAILURE_WINDOW_MS = 60_000

export function sessionRoutes (apiKey: string, now: () => number = Date.now): AdminRoute[] {
  const expected = digest(apiKey)
  const failures = new FailureCounter(FAILURES_PER_WINDOW, FAILURE_WINDOW_MS, now)
  return [
    {
      method: 'POST',
      path: /^\/admin\/sign-in\/?$/,
      public: true,
      handle: async ({ req, res }) => {
        const from = req.socket.remoteAddress ?? ''
        const wait = failures.blockedFor(from)
        if (wait > 0) {
          req.resume()
          return sendError(res, 429, 'rate_limit_exceeded', 'too_many_sign_in_attempts', 'too many wrong admin keys from this address; try again later',
            { 'retry-after': String(Math.ceil(wait / 1000)) })
        }
        const given = await readKey(req)
        if (given === null || apiKey === '' || !timingSafeEqual(digest(given), expected)) {
          failures.add(from)
          return sendError(res, 401, 'authentication_error', 'invalid_admin_key', 'wrong admin key')
        }
        // Secure when the page was reached over TLS (here or at a proxy in front): a cookie marked
        // Secure on plain http would never be sent back, and the page could not be used at all.
        const secure = isTls(req) ? '; Secure' : ''
        const cookie = `${ADMIN_COOKIE}=${encodeURIComponent(given)}; ${COOKIE_ATTRS}${secure}`
        if (isForm(req)) return redirect(res, cookie)
        res.writeHead(204, { 'set-cookie': cookie, 'cache-control': 'no-store' }).end()
      },
    },
    {
      method: 'POST',
      path: /^\/admin\/sign-out\/?$/,
      public: true,
      handle: ({ req, res }) => {
        req.resume()
        const cookie = `${ADMIN_COOKIE}=; ${COOKIE_ATTRS}; Max-Age=0`
        if (isForm(req)) return redirect(res, cookie)
        res.writeHead(204, { 'set-cookie': cookie, 'cache-control': 'no-store' }).end()
      },
    },
  ]
}

function isTls (req: IncomingMessage): boolean {
  const proto = req.headers['x-forwarded-proto']
  return (req.socket as { encrypted?: boolean }).encrypted === true || (typeof proto === 'string' && /^https\b/i.test(proto.trim()))
}

/** Failures per address in a fixed window; at most a few thousand addresses are remembered. */
class FailureCounter {
  private readonly seen = new Map<string, { count: number, since: number }>()
  constructor (private readonly limit: number, private readonly windowMs: number, private readonly now: () => number) {}

  blockedFor (addr: string): number {
    const e = this.seen.get(addr)
    if (!e) return 0
    const left = e.since + this.windowMs - this.now()
    if (left <= 0) { this.seen.delete(addr); return 0 }
    return e.count >= this.limit ? left : 0
  }

  add (addr: string): void {
    const t = this.now()
    const e = this.seen.get(addr)
    if (e && t - e.since < this.windowMs) { e.count++; return }
    if (this.seen.size >= 4096) this.seen.delete(this.seen.keys().next().value as string)
    this.seen.set(addr, { count: 1, since: t })
  }
}

function isForm (req: IncomingMessage): boolean {
  return (req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')
}

function redirect (res: ServerResponse, cookie: string): void {
  res.writeHead(303, { location: '/admin/', 'set-cookie': cookie, 'cache-control': 'no-store' }).end()
}

/** The key from a JSON body {"key": "..."} or a form field key=...; null when neither. */
async function readKey (req: IncomingMessage): Promise<string | null> {
  const text = await readText(req, MAX_BODY)
  if (text === null) return null
  if (isForm(req)) return new URLSearchParams(text).get('key')
  try {
    const body = JSON.parse(text) as unknown
    const key = body !== null && typeof body === 'object' ? (body as { key?: unknown }).key : undefined
    return typeof key === 'string' ? key : null
  } catch { return null }
}

function digest (s: string): Buffer { return createHash('sha256').update(s).digest() }
