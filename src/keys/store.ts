import type { Querier, Sql } from '../db/connect.js'

// api_keys as rows (sql/019_api_keys.sql): what the admin API writes and lists, and what every
// replica's key ring reads. Nothing here ever sees a secret, only its hash.

/** What the data plane needs of a live key. */
export interface ApiKey {
  id: string
  name: string
  /** The user its requests are billed to; null: the key itself (`key:<id>`). */
  userId: string | null
  groups: string[]
  rpm: number | null
  /** The models it may use; null: any model. */
  models: string[] | null
  /** Epoch milliseconds; null: never expires. */
  expiresAt: number | null
}

/** A key as the admin API shows it: never its secret nor the hash of it. */
export interface ApiKeyView {
  object: 'api_key'
  id: string
  name: string
  prefix: string
  user_id: string | null
  groups: string[]
  rpm: number | null
  models: string[] | null
  budget: { limit_usd: string, period: string } | null
  expires_at: string | null
  created_at: string
  last_used_at: string | null
  revoked_at: string | null
  status: 'active' | 'expired' | 'revoked'
}

export interface NewKey {
  id: string
  name: string
  prefix: string
  hash: string
  userId: string | null
  groups: string[]
  rpm: number | null
  models: string[] | null
  expiresAt: string | null
}

const ISO = (column: string): string => `to_char(${column} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`

/** The columns of ApiKeyView, its budget from `budgets` (scope 'key'). */
const VIEW = `'api_key' as object, k.id, k.name, k.prefix, k.user_id, k.groups, k.rpm, k.models,
  case when b.limit_usd is null then null else json_build_object('limit_usd', trim_scale(b.limit_usd)::text, 'period', b.period) end as budget,
  ${ISO('k.expires_at')} as expires_at, ${ISO('k.created_at')} as created_at,
  ${ISO('k.last_used_at')} as last_used_at, ${ISO('k.revoked_at')} as revoked_at,
  case when k.revoked_at is not null then 'revoked' when k.expires_at <= now() then 'expired' else 'active' end as status`

export async function insertKey (sql: Querier, org: string, k: NewKey): Promise<void> {
  await sql`insert into api_keys (id, organization_id, name, prefix, secret_hash, user_id, groups, rpm, models, expires_at)
    values (${k.id}, ${org}, ${k.name}, ${k.prefix}, ${k.hash}, ${k.userId}, ${k.groups}::text[], ${k.rpm},
            ${k.models}::text[], ${k.expiresAt}::timestamptz)`
}

export async function keyView (sql: Querier, org: string, id: string): Promise<ApiKeyView | null> {
  const [row] = await sql<ApiKeyView[]>`select ${sql.unsafe(VIEW)} from api_keys k
    left join budgets b on b.organization_id = k.organization_id and b.scope = 'key' and b.user_id = k.id
    where k.organization_id = ${org} and k.id = ${id}`
  return row ?? null
}

/** The organization's keys, oldest first, after the keyset cursor `after` (a key id). */
export async function keyViews (sql: Querier, org: string, limit: number, after?: string): Promise<ApiKeyView[]> {
  const rows = await sql<ApiKeyView[]>`select ${sql.unsafe(VIEW)} from api_keys k
    left join budgets b on b.organization_id = k.organization_id and b.scope = 'key' and b.user_id = k.id
    where k.organization_id = ${org}
      ${after === undefined ? sql`` : sql`and (k.created_at, k.id) > (select created_at, id from api_keys where organization_id = ${org} and id = ${after})`}
    order by k.created_at, k.id limit ${limit}`
  return [...rows]
}

/** Sets revoked_at once; false when the key is unknown or was already revoked. */
export async function revokeKey (sql: Querier, org: string, id: string): Promise<boolean> {
  const rows = await sql`update api_keys set revoked_at = now() where organization_id = ${org} and id = ${id} and revoked_at is null returning 1`
  return rows.length > 0
}

interface KeyRow { id: string, name: string, user_id: string | null, groups: string[], rpm: number | null, models: string[] | null, expires_at: Date | null }

const toKey = (r: KeyRow): ApiKey => ({
  id: r.id, name: r.name, userId: r.user_id, groups: r.groups, rpm: r.rpm, models: r.models, expiresAt: r.expires_at === null ? null : r.expires_at.getTime(),
})

/** Every key of the organization that is neither revoked nor expired, by secret hash. */
export async function liveKeys (sql: Querier, org: string): Promise<Map<string, ApiKey>> {
  const rows = await sql<Array<KeyRow & { secret_hash: string }>>`
    select id, name, user_id, groups, rpm, models, expires_at, secret_hash from api_keys
     where organization_id = ${org} and revoked_at is null and (expires_at is null or expires_at > now())`
  return new Map(rows.map((r) => [r.secret_hash, toKey(r)]))
}

export type Lookup = { key: ApiKey } | { refused: 'revoked' | 'expired' | 'unknown' }

/** One key by the hash of its secret, whatever its state. */
export async function keyByHash (sql: Querier, org: string, hash: string): Promise<Lookup> {
  const [r] = await sql<Array<KeyRow & { revoked: boolean, expired: boolean }>>`
    select id, name, user_id, groups, rpm, models, expires_at, revoked_at is not null as revoked, expires_at <= now() as expired
      from api_keys where organization_id = ${org} and secret_hash = ${hash}`
  if (!r) return { refused: 'unknown' }
  if (r.revoked) return { refused: 'revoked' }
  if (r.expired) return { refused: 'expired' }
  return { key: toKey(r) }
}

/**
 * When keys were last used, in one statement for all of them; a later time never goes back.
 * Rows are locked in id order, so two replicas writing at once never deadlock.
 */
export async function touchKeys (sql: Querier, org: string, used: Map<string, number>): Promise<void> {
  const ids = [...used.keys()].sort()
  const ats = ids.map((id) => new Date(used.get(id)!).toISOString())
  await sql`with locked as (select id from api_keys where organization_id = ${org} and id = any(${ids}::text[]) order by id for update)
    update api_keys k set last_used_at = greatest(k.last_used_at, u.at)
      from locked l join unnest(${ids}::text[], ${ats}::timestamptz[]) as u(id, at) on u.id = l.id
     where k.organization_id = ${org} and k.id = l.id`
}
