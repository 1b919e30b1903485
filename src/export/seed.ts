import { appendAudit } from '../audit/audit.js'
import type { Sql } from '../db/connect.js'
import { getCustomer } from './billing-customers.js'

/**
 * STRIPE_CUSTOMER_ID: the organization's Stripe customer, set at boot when it differs from the
 * stored one, with an audit row by actor `env`. A mapping changed through the admin API since is
 * replaced at the next boot, as the environment says.
 */
export async function seedStripeCustomer (sql: Sql, org: string, customer: string): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(727361021)`
    const before = await getCustomer(tx, org, 'organization', '')
    if (before === customer) return
    await tx`INSERT INTO billing_customers (organization_id, scope, subject, stripe_customer_id) VALUES (${org}, 'organization', '', ${customer})
      ON CONFLICT (organization_id, scope, subject) DO UPDATE SET stripe_customer_id = excluded.stripe_customer_id, updated_at = now()`
    await appendAudit(tx, org, {
      actor: 'env', action: 'billing_customer.set', target: 'billing/customers/organization',
      before: before === null ? null : { stripe_customer_id: before }, after: { stripe_customer_id: customer },
    })
  })
}
