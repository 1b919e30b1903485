import type { Sql } from '../db/connect.js'

// Model allowlists per group as rows of model_allowlists (sql/018): what the admin API writes
// and every replica's cache (allowlists.ts) reads. A group without a row is not restricted.

export interface GroupAllowlist { group_id: string, models: string[], updated_at: string }

/** The most models one list may name, and the longest id: bounds what every request is checked against. */
export const MAX_MODELS = 1000
export const MAX_MODEL_ID = 256

export async function setAllowlist (sql: Sql, org: string, groupId: string, models: string[]): Promise<GroupAllowlist> {
  const [r] = await sql<Array<{ group_id: string, models: string[], updated_at: Date }>>`
    insert into model_allowlists (organization_id, group_id, models, updated_at)
    values (${org}, ${groupId}, ${models}::text[], now())
    on conflict (organization_id, group_id) do update set models = excluded.models, updated_at = now()
    returning group_id, models, updated_at`
  return { group_id: r.group_id, models: r.models, updated_at: r.updated_at.toISOString() }
}

export async function deleteAllowlist (sql: Sql, org: string, groupId: string): Promise<boolean> {
  const rows = await sql`delete from model_allowlists where organization_id = ${org} and group_id = ${groupId} returning 1`
  return rows.length > 0
}

/** Every list of the organization (groupId: just that group's), by group id. */
export async function readAllowlists (sql: Sql, org: string, groupId?: string): Promise<GroupAllowlist[]> {
  const rows = await sql<Array<{ group_id: string, models: string[], updated_at: Date }>>`
    select group_id, models, updated_at from model_allowlists
     where organization_id = ${org} ${groupId === undefined ? sql`` : sql`and group_id = ${groupId}`}
     order by group_id`
  return rows.map((r) => ({ group_id: r.group_id, models: r.models, updated_at: r.updated_at.toISOString() }))
}
