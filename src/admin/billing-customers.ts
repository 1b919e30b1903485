import type { Sql } from '../db/connect.js'
import { appendAudit } from '../audit/audit.js'
import { CUSTOMER_ID, deleteCustomer, getCustomer, listCustomers, setCustomer, type CustomerScope } from '../export/billing-customers.js'
import { sendError } from '../lib/errors.js'
import { readJson } from '../lib/read-body.js'
import { sendJson, type AdminRoute } from './router.js'

// /admin/v1/billing/customers: which Stripe customer the Stripe export bills a row to. The most
// specific wins: the user's own, then the API key's, then a group's, then the organization's
// (docs/export.md).

const TARGETS: Array<[RegExp, (p: Record<string, string>) => [CustomerScope, string]]> = [
  [/^\/admin\/v1\/billing\/customers\/organization$/, () => ['organization', '']],
  [/^\/admin\/v1\/billing\/customers\/users\/(?<userId>[^/]+)$/, (p) => ['user', p.userId]],
  [/^\/admin\/v1\/billing\/customers\/keys\/(?<keyId>[^/]+)$/, (p) => ['key', p.keyId]],
  [/^\/admin\/v1\/billing\/customers\/groups\/(?<groupId>[^/]+)$/, (p) => ['group', p.groupId]],
]

const target = (scope: CustomerScope, subject: string): string =>
  scope === 'organization' ? 'billing/customers/organization' : `billing/customers/${scope}s/${subject}`

function shown (scope: CustomerScope, subject: string, customer: string): Record<string, unknown> {
  return {
    object: 'billing_customer', scope,
    ...(scope === 'user' ? { user_id: subject } : scope === 'group' ? { group_id: subject } : scope === 'key' ? { key_id: subject } : {}),
    stripe_customer_id: customer,
  }
}

export function billingCustomerRoutes (d: { organizationId: string, sql: () => Sql }): AdminRoute[] {
  const org = d.organizationId
  return [
    {
      method: 'GET',
      path: /^\/admin\/v1\/billing\/customers\/?$/,
      handle: async ({ res }) => sendJson(res, 200, {
        object: 'list', data: (await listCustomers(d.sql(), org)).map((c) => shown(c.scope, c.subject, c.stripe_customer_id)),
      }),
    },
    ...TARGETS.flatMap(([path, of]): AdminRoute[] => [
      {
        method: 'GET',
        path,
        handle: async ({ req, res, params }) => {
          req.resume()
          const [scope, subject] = of(params)
          const c = await getCustomer(d.sql(), org, scope, subject)
          if (c === null) return sendError(res, 404, 'not_found_error', 'billing_customer_not_found', `no Stripe customer mapped for ${target(scope, subject)}`)
          sendJson(res, 200, shown(scope, subject, c))
        },
      },
      {
        method: 'PUT',
        path,
        handle: async (r) => {
          const [scope, subject] = of(r.params)
          if (subject.length > 256 || /[\u0000-\u001f]/.test(subject)) return sendError(r.res, 400, 'invalid_request_error', 'invalid_path', 'the id in the path must be at most 256 printable characters')
          let body: unknown
          try { body = await readJson(r.req) } catch (err) { return sendError(r.res, 400, 'invalid_request_error', 'invalid_json', `the body must be JSON: ${(err as Error).message}`) }
          const problem = validate(body)
          if (problem !== null) return sendError(r.res, 400, 'invalid_request_error', 'invalid_billing_customer', problem)
          const customer = (body as { stripe_customer_id: string }).stripe_customer_id
          await d.sql().begin(async (tx) => {
            const before = await setCustomer(tx, org, scope, subject, customer)
            if (before !== customer) {
              await appendAudit(tx, org, {
                actor: r.actor, action: 'billing_customer.set', target: target(scope, subject),
                before: before === null ? null : { stripe_customer_id: before }, after: { stripe_customer_id: customer },
              })
            }
          })
          sendJson(r.res, 200, shown(scope, subject, customer))
        },
      },
      {
        method: 'DELETE',
        path,
        handle: async (r) => {
          r.req.resume()
          const [scope, subject] = of(r.params)
          const before = await d.sql().begin(async (tx) => {
            const was = await deleteCustomer(tx, org, scope, subject)
            if (was !== null) {
              await appendAudit(tx, org, { actor: r.actor, action: 'billing_customer.deleted', target: target(scope, subject), before: { stripe_customer_id: was }, after: null })
            }
            return was
          })
          if (before === null) return sendError(r.res, 404, 'not_found_error', 'billing_customer_not_found', `no Stripe customer mapped for ${target(scope, subject)}`)
          sendJson(r.res, 200, { ...shown(scope, subject, before), deleted: true })
        },
      },
    ]),
  ]
}

function validate (body: unknown): string | null {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return 'the body must be a JSON object such as {"stripe_customer_id": "cus_..."}'
  for (const k of Object.keys(body)) if (k !== 'stripe_customer_id') return `unknown field ${k}: only stripe_customer_id is accepted`
  const c = (body as Record<string, unknown>).stripe_customer_id
  if (typeof c !== 'string' || !CUSTOMER_ID.test(c)) return 'stripe_customer_id must be a Stripe customer id such as "cus_NffrFeUfNV2Hib"'
  return null
}
