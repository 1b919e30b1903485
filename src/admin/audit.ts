import type { Sql } from '../db/connect.js'
import { auditPage } from '../audit/audit.js'
import { forgetUser } from '../audit/forget.js'
import { sendError } from '../lib/errors.js'
import { MAX_USER_ID_CHARS } from '../identity/user-id.js'
import { ParamError, parseLimit } from './params.js'
import { sendJson, type AdminRoute } from './router.js'

// GET /admin/v1/audit (the trail, newest first, paged like /admin/v1/events: limit, has_more,
// next_cursor) and DELETE /admin/v1/users/{userId} (forget a user, README "Privacy").

export interface AuditRouteDeps {
  organizationId: string
  sql: () => Sql
  /** A user was forgotten: caches of this process let go of the id (their budget moved too). */
  forgotten?: (userId: string) => void
}

const CURSOR = /^audit:(\d{1,19})$/

export function encodeAuditCursor (id: string): string {
  return Buffer.from(`audit:${id}`).toString('base64url')
}

export function parseAuditCursor (q: URLSearchParams): string | undefined {
  const v = q.get('cursor')
  if (v === null || v === '') return undefined
  const m = CURSOR.exec(Buffer.from(v, 'base64url').toString('utf8'))
  if (!m || BigInt(m[1]) > 9223372036854775807n) throw new ParamError('cursor', 'cursor is not one this API returned (use next_cursor as given)')
  return m[1]
}

export function auditRoutes (d: AuditRouteDeps): AdminRoute[] {
  return [
    {
      method: 'GET',
      path: /^\/admin\/v1\/audit\/?$/,
      handle: async ({ res, url }) => {
        let limit: number
        let before: string | undefined
        try {
          limit = parseLimit(url.searchParams)
          before = parseAuditCursor(url.searchParams)
        } catch (err) {
          if (!(err instanceof ParamError)) throw err
          return sendError(res, 400, 'invalid_request_error', 'invalid_parameter', err.message)
        }
        // One row more than asked tells whether another page exists.
        const rows = await auditPage(d.sql(), d.organizationId, limit + 1, before)
        const page = rows.slice(0, limit)
        const more = rows.length > limit
        sendJson(res, 200, {
          object: 'list',
          data: page.map((r) => ({ at: r.at, actor: r.actor, action: r.action, target: r.target, before: r.before, after: r.after })),
          has_more: more,
          next_cursor: more ? encodeAuditCursor(page[page.length - 1].id) : null,
        })
      },
    },
    {
      method: 'DELETE',
      path: /^\/admin\/v1\/users\/(?<userId>[^/]+)$/,
      handle: async ({ req, res, params, actor }) => {
        req.resume()
        const userId = params.userId
        if (userId.length > MAX_USER_ID_CHARS || /[\u0000-\u001f]/.test(userId)) {
          return sendError(res, 400, 'invalid_request_error', 'invalid_path', `userId must be at most ${MAX_USER_ID_CHARS} printable characters`)
        }
        const done = await forgetUser(d.sql(), d.organizationId, userId, actor)
        if (done === null) return sendError(res, 404, 'not_found_error', 'user_not_found', 'no usage, mapping or budget names this user')
        if (!done.alreadyForgotten) d.forgotten?.(userId)
        sendJson(res, 200, { object: 'user.forgotten', user_id: done.pseudonym, forgotten: true, already_forgotten: done.alreadyForgotten })
      },
    },
  ]
}
