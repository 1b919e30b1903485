import type { Config } from '../config/config.js'
import type { Sql } from '../db/connect.js'
import { PERIODS } from '../budgets/periods.js'
import { budgetStatus, deleteBudget, setBudget, type BudgetScope } from '../budgets/store.js'
import { sendError } from '../lib/errors.js'
import { readJson } from '../lib/read-body.js'
import { appendAudit } from '../audit/audit.js'
import { auditedChange } from './audited.js'
import { sendJson, type AdminRoute } from './router.js'

// /admin/v1/budgets: read and write the budgets of README "Budgets and limits".

export interface BudgetRouteDeps {
  config: Config
  sql: () => Sql
  /** Tells this process's admission that budgets changed (other replicas see it within BUDGET_REFRESH_MS). */
  changed?: () => void
  now?: () => Date
}

const LIMIT = /^\d{1,12}(\.\d{1,12})?$/
// One pattern per scope: the router decodes every named group, matched or not.
const TARGETS: Array<[RegExp, (p: Record<string, string>) => [BudgetScope, string]]> = [
  [/^\/admin\/v1\/budgets\/organization$/, () => ['organization', '']],
  [/^\/admin\/v1\/budgets\/default-user$/, () => ['default-user', '']],
  [/^\/admin\/v1\/budgets\/users\/(?<userId>[^/]+)$/, (p) => ['user', p.userId]],
  [/^\/admin\/v1\/budgets\/groups\/(?<groupId>[^/]+)$/, (p) => ['group', p.groupId]],
]

/** What the subject of a scoped budget is called in messages and the audit trail. */
const SUBJECT: Partial<Record<BudgetScope, string>> = { user: 'user', group: 'group', key: 'key' }

export function budgetRoutes (d: BudgetRouteDeps): AdminRoute[] {
  const org = d.config.organization.id
  const now = d.now ?? (() => new Date())
  const one = async (sql: Sql, scope: BudgetScope, userId: string) =>
    (await budgetStatus(sql, org, now(), scope === 'user' ? userId : undefined))
      .find((b) => b.scope === scope && (scope === 'user' ? b.user_id === userId : scope === 'group' ? b.group_id === userId : true)) ?? null
  return [
    {
      method: 'GET',
      path: /^\/admin\/v1\/budgets\/?$/,
      handle: async ({ res }) => sendJson(res, 200, { object: 'list', data: await budgetStatus(d.sql(), org, now()) }),
    },
    {
      method: 'GET',
      path: /^\/admin\/v1\/budgets\/users\/(?<userId>[^/]+)$/,
      handle: async ({ res, params }) => {
        const data = await budgetStatus(d.sql(), org, now(), params.userId)
        sendJson(res, 200, { object: 'list', user_id: params.userId, data })
      },
    },
    {
      method: 'GET',
      path: /^\/admin\/v1\/budgets\/groups\/(?<groupId>[^/]+)$/,
      handle: async ({ res, params }) => {
        const b = await one(d.sql(), 'group', params.groupId)
        if (!b) return sendError(res, 404, 'not_found_error', 'budget_not_found', `no budget for group ${params.groupId}`)
        sendJson(res, 200, b)
      },
    },
    ...TARGETS.flatMap(([path, target]): AdminRoute[] => [
      {
        method: 'PUT',
        path,
        handle: async (r) => {
          const [scope, userId] = target(r.params)
          const body = await readJson(r.req)
          const problem = validate(body, scope, userId)
          if (typeof problem === 'string') return sendError(r.res, 400, 'invalid_request_error', 'invalid_budget', problem)
          const what = budgetTarget(scope, userId)
          // Told whatever the outcome: a commit whose answer was lost still binds here at once.
          const after = await auditedChange(d.sql(), org, what, async (tx) => {
            const before = await one(tx, scope, userId)
            await setBudget(tx, org, scope, userId, problem.limit, problem.period)
            const after = await one(tx, scope, userId)
            await appendAudit(tx, org, { actor: r.actor, action: 'budget.set', target: what, before: limitOf(before), after: limitOf(after) })
            return after
          }).finally(() => d.changed?.())
          sendJson(r.res, 200, after)
        },
      },
      {
        method: 'DELETE',
        path,
        handle: async (r) => {
          r.req.resume()
          const [scope, userId] = target(r.params)
          const what = budgetTarget(scope, userId)
          const deleted = await auditedChange(d.sql(), org, what, async (tx) => {
            const before = await one(tx, scope, userId)
            if (!await deleteBudget(tx, org, scope, userId)) return false
            await appendAudit(tx, org, { actor: r.actor, action: 'budget.deleted', target: what, before: limitOf(before), after: null })
            return true
          }).finally(() => d.changed?.())
          if (!deleted) return sendError(r.res, 404, 'not_found_error', 'budget_not_found', `no ${scope} budget${userId ? ` for ${SUBJECT[scope]} ${userId}` : ''}`)
          sendJson(r.res, 200, { object: 'budget.deleted', scope, user_id: scope === 'user' ? userId : null, ...(scope === 'group' ? { group_id: userId } : {}), deleted: true })
        },
      },
    ]),
  ]
}

function budgetTarget (scope: BudgetScope, userId: string): string {
  return userId !== '' ? `budgets/${SUBJECT[scope]}s/${userId}` : `budgets/${scope}`
}

/** What the trail keeps of a budget: its setting, not its spend at that moment. */
function limitOf (b: { limit_usd: string, period: string } | null): { limit_usd: string, period: string } | null {
  return b === null ? null : { limit_usd: b.limit_usd, period: b.period }
}

function validate (body: unknown, scope: BudgetScope, userId: string): string | BudgetSetting {
  if (userId !== '' && (userId.length > 256 || /[\u0000-\u001f]/.test(userId))) return `${SUBJECT[scope]}Id must be at most 256 printable characters`
  return budgetSetting(body)
}

export interface BudgetSetting { limit: string, period: (typeof PERIODS)[number] }

/** A budget's `{"limit_usd", "period"}`, checked field by field; a string says what is wrong. */
export function budgetSetting (body: unknown, what = 'the body'): string | BudgetSetting {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return `${what} must be a JSON object such as {"limit_usd": "20.00", "period": "month"}`
  const b = body as Record<string, unknown>
  for (const k of Object.keys(b)) if (k !== 'limit_usd' && k !== 'period') return `unknown field ${k}: only limit_usd and period are accepted`
  let limit: string
  if (typeof b.limit_usd === 'string') limit = b.limit_usd.trim()
  else if (typeof b.limit_usd === 'number' && Number.isFinite(b.limit_usd)) limit = String(b.limit_usd)
  else return 'limit_usd is required: a decimal string such as "20.00" or a number'
  if (!LIMIT.test(limit)) return 'limit_usd must be a non-negative decimal amount in USD with at most 12 digits before and 12 after the point'
  if (typeof b.period !== 'string' || !(PERIODS as readonly string[]).includes(b.period)) return `period must be one of ${PERIODS.join(', ')}`
  return { limit, period: b.period as (typeof PERIODS)[number] }
}
