import type { Sql } from '../db/connect.js'
import type { ExportTx } from './sink.js'
import type { ExportRow } from './sink.js'

// Which Stripe customer a row is billed to (sql/021_export.sql, billing_customers): the row's
// user's own customer, else its API key's, else the customer of the row's first group (groups
// are sorted) that has one, else the organization's. The most specific mapping wins: a person,
// then the key they used, then a team, then the organization. A request made with a key and no
// user is the user `key:<keyId>`, so either mapping reaches it. The mapping in force when the
// row is exported is the one used.

export type CustomerScope = 'organization' | 'user' | 'key' | 'group'

export const CUSTOMER_ID = /^cus_[A-Za-z0-9]{1,250}$/

export interface CustomerMap {
  organization: string | null
  users: Map<string, string>
  keys: Map<string, string>
  groups: Map<string, string>
}

type Querier = Sql | ExportTx

export async function loadCustomers (sql: Querier, org: string): Promise<CustomerMap> {
  const rows = await sql<{ scope: CustomerScope, subject: string, stripe_customer_id: string }[]>`SELECT scope, subject, stripe_customer_id
    FROM billing_customers WHERE organization_id = ${org}`
  const map: CustomerMap = { organization: null, users: new Map(), keys: new Map(), groups: new Map() }
  for (const r of rows) {
    if (r.scope === 'organization') map.organization = r.stripe_customer_id
    else if (r.scope === 'user') map.users.set(r.subject, r.stripe_customer_id)
    else if (r.scope === 'key') map.keys.set(r.subject, r.stripe_customer_id)
    else map.groups.set(r.subject, r.stripe_customer_id)
  }
  return map
}

export function customerFor (map: CustomerMap, row: Pick<ExportRow, 'userId' | 'apiKeyId' | 'groups'>): string | null {
  if (row.userId !== null) {
    const own = map.users.get(row.userId)
    if (own !== undefined) return own
  }
  if (row.apiKeyId !== null) {
    const key = map.keys.get(row.apiKeyId)
    if (key !== undefined) return key
  }
  for (const g of row.groups) {
    const c = map.groups.get(g)
    if (c !== undefined) return c
  }
  return map.organization
}

export async function getCustomer (sql: Querier, org: string, scope: CustomerScope, subject: string): Promise<string | null> {
  const [r] = await sql<{ stripe_customer_id: string }[]>`SELECT stripe_customer_id FROM billing_customers
    WHERE organization_id = ${org} AND scope = ${scope} AND subject = ${subject}`
  return r?.stripe_customer_id ?? null
}

/** Sets the mapping; returns what it was before (null for none). */
export async function setCustomer (sql: Querier, org: string, scope: CustomerScope, subject: string, customer: string): Promise<string | null> {
  const before = await getCustomer(sql, org, scope, subject)
  await sql`INSERT INTO billing_customers (organization_id, scope, subject, stripe_customer_id) VALUES (${org}, ${scope}, ${subject}, ${customer})
    ON CONFLICT (organization_id, scope, subject) DO UPDATE SET stripe_customer_id = excluded.stripe_customer_id, updated_at = now()`
  return before
}

/** Removes the mapping; returns what it was (null when there was none). */
export async function deleteCustomer (sql: Querier, org: string, scope: CustomerScope, subject: string): Promise<string | null> {
  const [r] = await sql<{ stripe_customer_id: string }[]>`DELETE FROM billing_customers
    WHERE organization_id = ${org} AND scope = ${scope} AND subject = ${subject} RETURNING stripe_customer_id`
  return r?.stripe_customer_id ?? null
}

export async function listCustomers (sql: Querier, org: string): Promise<Array<{ scope: CustomerScope, subject: string, stripe_customer_id: string }>> {
  return [...await sql<{ scope: CustomerScope, subject: string, stripe_customer_id: string }[]>`SELECT scope, subject, stripe_customer_id
    FROM billing_customers WHERE organization_id = ${org} ORDER BY scope, subject`]
}
