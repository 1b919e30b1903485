import { createHash } from 'node:crypto'
import type { Sql } from '../db/connect.js'

// The audit trail (sql/016_audit_log.sql): one appended row per change made through the admin
// plane, the command line or the environment. Callers pass the value before and after as the
// admin API shows it; the row is written in the caller's transaction when one is given, so a
// change and its audit line commit together.

export interface AuditEntry {
  /** `env`, `cli`, or actorOf() of the admin credential. */
  actor: string
  /** What was done, `noun.verb`: `budget.set`, `budget.deleted`, `key.created`, `user.forgotten`... */
  action: string
  /** What it was done to, as a path below /admin/v1: `budgets/users/alice`, `keys/key_123`. */
  target: string
  before: unknown
  after: unknown
}

export interface AuditRow {
  id: string
  at: string
  actor: string
  action: string
  target: string
  before: unknown
  after: unknown
}

type Querier = Pick<Sql, 'unsafe'> & ((strings: TemplateStringsArray, ...values: any[]) => any)

export async function appendAudit (sql: Querier, organizationId: string, e: AuditEntry): Promise<void> {
  await sql`INSERT INTO audit_log (organization_id, actor, action, target, before, after)
    VALUES (${organizationId}, ${e.actor}, ${e.action}, ${e.target},
      ${jsonText(e.before)}::text::jsonb, ${jsonText(e.after)}::text::jsonb)`
}

/**
 * The value as JSON text, parsed by Postgres: a parameter typed jsonb would be JSON-encoded again by
 * the driver, and the trail would hold a string instead of the object.
 */
function jsonText (v: unknown): string | null {
  return v === undefined || v === null ? null : JSON.stringify(v)
}

/**
 * Who made an admin change, without the credential: the kind of credential and the first 12 hex
 * digits of its SHA-256. The same key always gives the same actor, so a trail can be read by key.
 */
export function actorOf (kind: 'admin-key' | 'session', credential: string): string {
  return `${kind}:${createHash('sha256').update(credential).digest('hex').slice(0, 12)}`
}

/**
 * One page of the trail, newest first, after the keyset cursor `before` (an id). The order names
 * the table's column: a bare `id` would be the text one selected, and '9' sorts after '10'.
 */
export async function auditPage (sql: Sql, organizationId: string, limit: number, before?: string): Promise<AuditRow[]> {
  const rows = await sql<AuditRow[]>`SELECT id::text, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS at,
      actor, action, target, before, after
    FROM audit_log WHERE organization_id = ${organizationId} ${before === undefined ? sql`` : sql`AND id < ${before}::bigint`}
    ORDER BY audit_log.id DESC LIMIT ${limit}`
  return [...rows]
}
