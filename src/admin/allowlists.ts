import type { Config } from '../config/config.js'
import type { Sql } from '../db/connect.js'
import { deleteAllowlist, MAX_MODEL_ID, MAX_MODELS, readAllowlists, setAllowlist } from '../budgets/allowlist-store.js'
import { sendError } from '../lib/errors.js'
import { readJson } from '../lib/read-body.js'
import { appendAudit } from '../audit/audit.js'
import { auditedChange } from './audited.js'
import { sendJson, type AdminRoute } from './router.js'

// /admin/v1/allowlists: the models each group's members may use (README "Model allowlists").

export interface AllowlistRouteDeps {
  config: Config
  sql: () => Sql
  /** Tells this process's admission that a list changed (other replicas re-read within BUDGET_REFRESH_MS). */
  changed?: () => Promise<void> | void
}

const GROUP = /^\/admin\/v1\/allowlists\/groups\/(?<groupId>[^/]+)$/

export function allowlistRoutes (d: AllowlistRouteDeps): AdminRoute[] {
  const org = d.config.organization.id
  const one = async (sql: Sql, groupId: string) => (await readAllowlists(sql, org, groupId))[0] ?? null
  return [
    {
      method: 'GET',
      path: /^\/admin\/v1\/allowlists\/?$/,
      handle: async ({ res }) => sendJson(res, 200, { object: 'list', data: await readAllowlists(d.sql(), org) }),
    },
    {
      method: 'GET',
      path: GROUP,
      handle: async ({ res, params }) => {
        const l = await one(d.sql(), params.groupId)
        if (!l) return sendError(res, 404, 'not_found_error', 'allowlist_not_found', `group ${params.groupId} has no model allowlist: its members may use every model`)
        sendJson(res, 200, l)
      },
    },
    {
      method: 'PUT',
      path: GROUP,
      handle: async (r) => {
        const groupId = r.params.groupId
        const models = validate(await readJson(r.req), groupId)
        if (typeof models === 'string') return sendError(r.res, 400, 'invalid_request_error', 'invalid_allowlist', models)
        const target = `allowlists/groups/${groupId}`
        const after = await auditedChange(d.sql(), org, target, async (tx) => {
          const before = await one(tx, groupId)
          const after = await setAllowlist(tx, org, groupId, models)
          await appendAudit(tx, org, { actor: r.actor, action: 'allowlist.set', target, before: before && { models: before.models }, after: { models: after.models } })
          return after
        })
        await d.changed?.()
        sendJson(r.res, 200, after)
      },
    },
    {
      method: 'DELETE',
      path: GROUP,
      handle: async (r) => {
        r.req.resume()
        const groupId = r.params.groupId
        const target = `allowlists/groups/${groupId}`
        const deleted = await auditedChange(d.sql(), org, target, async (tx) => {
          const before = await one(tx, groupId)
          if (!await deleteAllowlist(tx, org, groupId)) return false
          await appendAudit(tx, org, { actor: r.actor, action: 'allowlist.deleted', target, before: before && { models: before.models }, after: null })
          return true
        })
        if (!deleted) return sendError(r.res, 404, 'not_found_error', 'allowlist_not_found', `group ${groupId} has no model allowlist`)
        await d.changed?.()
        sendJson(r.res, 200, { object: 'allowlist.deleted', group_id: groupId, deleted: true })
      },
    },
  ]
}

/** The list as stored: trimmed ids, duplicates dropped, in the order given. An empty list allows nothing. */
function validate (body: unknown, groupId: string): string[] | string {
  if (groupId.length > 256 || /[\u0000-\u001f]/.test(groupId)) return 'groupId must be at most 256 printable characters'
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return 'the body must be a JSON object such as {"models": ["openai/gpt-4o-mini"]}'
  const b = body as Record<string, unknown>
  for (const k of Object.keys(b)) if (k !== 'models') return `unknown field ${k}: only models is accepted`
  if (!Array.isArray(b.models)) return 'models is required: a list of model ids such as ["openai/gpt-4o-mini"]'
  if (b.models.length > MAX_MODELS) return `models may name at most ${MAX_MODELS} models`
  const out: string[] = []
  for (const m of b.models) {
    if (typeof m !== 'string' || m.trim() === '') return 'every entry of models must be a non-empty model id'
    const id = m.trim()
    if (id.length > MAX_MODEL_ID || /[\u0000-\u001f\u007f]/.test(id)) return `a model id is at most ${MAX_MODEL_ID} printable characters`
    if (!out.includes(id)) out.push(id)
  }
  return out
}
