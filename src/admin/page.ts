import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { sendError } from '../lib/errors.js'
import type { AdminRoute } from './router.js'

// The /admin/ page: plain HTML, CSS and JS from web/admin/ in the repository (next to sql/, and
// copied into the image the same way), served by the sidecar itself. Nothing comes from a CDN:
// the Content-Security-Policy allows this origin only.

const WEB_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'web', 'admin')

const FILES: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'money.js': 'text/javascript; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
}

const HEADERS = {
  'content-security-policy': "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
}

export function pageRoutes (dir = WEB_DIR): AdminRoute[] {
  const cache = new Map<string, Buffer>()
  const serve = async (name: string, res: Parameters<AdminRoute['handle']>[0]['res']): Promise<void> => {
    let body = cache.get(name)
    if (!body) {
      try { body = await readFile(join(dir, name)) } catch {
        return sendError(res, 500, 'api_error', 'page_missing', `the admin page's ${name} is missing from ${dir}: the deployment is incomplete`)
      }
      cache.set(name, body)
    }
    res.writeHead(200, { ...HEADERS, 'content-type': FILES[name], 'content-length': body.length }).end(body)
  }
  return [
    { method: 'GET', path: /^\/admin\/?$/, public: true, handle: ({ res }) => serve('index.html', res) },
    {
      method: 'GET',
      path: /^\/admin\/assets\/(?<file>[a-z]+\.(?:js|css))$/,
      public: true,
      handle: ({ res, params }) => FILES[params.file] && params.file !== 'index.html'
        ? serve(params.file, res)
        : sendError(res, 404, 'not_found_error', 'not_found', `no asset ${params.file}`),
    },
  ]
}
