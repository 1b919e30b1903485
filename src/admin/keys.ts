import type { Sql } from '../db/connect.js'
import { appendAudit } from '../audit/audit.js'
import { setBudget } from '../budgets/store.js'
import { sendError } from '../lib/errors.js'
import { readJson } from '../lib/read-body.js'
import { newKeyId, newSecret } from '../keys/secret.js'
import { insertKey, keyView, keyViews, revokeKey, type ApiKey, type ApiKeyView } from '../keys/store.js'
import { keyInput } from './key-input.js'
import { ParamError, parseLimit } from './params.js'
import { sendJson, type AdminRoute } from './router.js'

// /admin/v1/keys: API keys for apps (README "API keys for apps"). A key's secret is in the answer
// to its creation and nowhere else: not in any later answer, the audit trail, the log or the
// database (which holds its SHA-256). Revoking keeps the row, so reports can still name the key.

export interface KeyRouteDeps {
  organizationId: string
  sql: () => Sql
  /** This replica's key ring: a new key works here at once, a revoked one stops at once (others within API_KEYS_REFRESH_MS). */
  ring?: { added: (hash: string, key: ApiKey) => void, revoked: (id: string) => void }
  /** A key's budget was written: this replica's admission re-reads whether budgets exist. */
  budgetsChanged?: () => void
  now?: () => Date
}

const KEY_ID = /^key_[A-Za-z0-9_-]{16}$/

export function keyRoutes (d: KeyRouteDeps): AdminRoute[] {
  const org = d.organizationId
  const now = d.now ?? (() => new Date())
  return [
    {
      method: 'POST',
      path: /^\/admin\/v1\/keys\/?$/,
      handle: async (r) => {
        const input = keyInput(await readJson(r.req), now())
        if (typeof input === 'string') return sendError(r.res, 400, 'invalid_request_error', 'invalid_key', input)
        const id = newKeyId()
        const { secret, hash, prefix } = newSecret()
        const view = await d.sql().begin(async (tx) => {
          await insertKey(tx, org, { id, name: input.name, prefix, hash, userId: input.userId, groups: input.groups, rpm: input.rpm, models: input.models, expiresAt: input.expiresAt })
          if (input.budget) await setBudget(tx, org, 'key', id, input.budget.limit, input.budget.period)
          const created = (await keyView(tx, org, id))!
          await appendAudit(tx, org, { actor: r.actor, action: 'key.created', target: `keys/${id}`, before: null, after: settings(created) })
          return created
        }).finally(() => { if (input.budget) d.budgetsChanged?.() })
        d.ring?.added(hash, {
          id, name: input.name, userId: input.userId, groups: input.groups, rpm: input.rpm, models: input.models,
          expiresAt: input.expiresAt === null ? null : Date.parse(input.expiresAt),
        })
        sendJson(r.res, 201, { ...view, key: secret })
      },
    },
    {
      method: 'GET',
      path: /^\/admin\/v1\/keys\/?$/,
      handle: async ({ res, url }) => {
        let limit: number
        try { limit = parseLimit(url.searchParams) } catch (err) {
          if (err instanceof ParamError) return sendError(res, 400, 'invalid_request_error', 'invalid_parameter', err.message)
          throw err
        }
        const cursor = url.searchParams.get('cursor') ?? undefined
        if (cursor !== undefined && !KEY_ID.test(cursor)) return sendError(res, 400, 'invalid_request_error', 'invalid_parameter', 'cursor is not one this API returned (use next_cursor as given)')
        const rows = await keyViews(d.sql(), org, limit + 1, cursor)
        const more = rows.length > limit
        const data = rows.slice(0, limit)
        sendJson(res, 200, { object: 'list', data, has_more: more, next_cursor: more ? data[data.length - 1].id : null })
      },
    },
    {
      method: 'GET',
      path: /^\/admin\/v1\/keys\/(?<id>[^/]+)$/,
      handle: async ({ res, params }) => {
        const view = KEY_ID.test(params.id) ? await keyView(d.sql(), org, params.id) : null
        if (!view) return sendError(res, 404, 'not_found_error', 'key_not_found', `no API key ${params.id}`)
        sendJson(res, 200, view)
      },
    },
    {
      method: 'DELETE',
      path: /^\/admin\/v1\/keys\/(?<id>[^/]+)$/,
      handle: async (r) => {
        r.req.resume()
        const id = r.params.id
        const result = !KEY_ID.test(id) ? null : await d.sql().begin(async (tx) => {
          const before = await keyView(tx, org, id)
          if (!before) return null
          if (!(await revokeKey(tx, org, id))) return before // revoked already: nothing changes, nothing is recorded
          const after = (await keyView(tx, org, id))!
          await appendAudit(tx, org, { actor: r.actor, action: 'key.revoked', target: `keys/${id}`, before: settings(before), after: settings(after) })
          return after
        })
        if (!result) return sendError(r.res, 404, 'not_found_error', 'key_not_found', `no API key ${id}`)
        d.ring?.revoked(id)
        sendJson(r.res, 200, result)
      },
    },
  ]
}

/** What the trail keeps of a key: its settings and state, never its secret nor when it was last used. */
function settings (v: ApiKeyView): Omit<ApiKeyView, 'last_used_at' | 'object'> {
  const { last_used_at: _lastUsed, object: _object, ...rest } = v
  return rest
}
