import { createHash, timingSafeEqual } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { sendError } from '../proxy/errors.js'
import { ADMIN_COOKIE, type AdminRoute } from './router.js'

// Sign-in for the /admin/ page: the key goes once in a POST body and comes back as an HttpOnly,
// SameSite=Strict cookie scoped to /admin, so page scripts never hold it and it is never in a URL.

const COOKIE_ATTRS = 'HttpOnly; SameSite=Strict; Path=/admin'
const MAX_BODY = 4096

export function sessionRoutes (apiKey: string): AdminRoute[] {
  const expected = digest(apiKey)
  return [
    {
      method: 'POST',
      path: /^\/admin\/sign-in\/?$/,
      public: true,
      handle: async ({ req, res }) => {
        const given = await readKey(req)
        if (given === null || apiKey === '' || !timingSafeEqual(digest(given), expected)) {
          return sendError(res, 401, 'authentication_error', 'invalid_admin_key', 'wrong admin key')
        }
        const cookie = `${ADMIN_COOKIE}=${encodeURIComponent(given)}; ${COOKIE_ATTRS}`
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

function isForm (req: IncomingMessage): boolean {
  return (req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')
}

function redirect (res: ServerResponse, cookie: string): void {
  res.writeHead(303, { location: '/admin/', 'set-cookie': cookie, 'cache-control': 'no-store' }).end()
}

/** The key from a JSON body {"key": "..."} or a form field key=...; null when neither. */
async function readKey (req: IncomingMessage): Promise<string | null> {
  const parts: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > MAX_BODY) return null
    parts.push(chunk)
  }
  const text = Buffer.concat(parts).toString('utf8')
  if (isForm(req)) return new URLSearchParams(text).get('key')
  try {
    const body = JSON.parse(text) as unknown
    const key = body !== null && typeof body === 'object' ? (body as { key?: unknown }).key : undefined
    return typeof key === 'string' ? key : null
  } catch { return null }
}

function digest (s: string): Buffer { return createHash('sha256').update(s).digest() }
