import { hostname } from 'node:os'
import { randomBytes } from 'node:crypto'
import type { Sql } from '../db/connect.js'
import type { ExportTx } from './sink.js'

// One active exporter per organization and sink across replicas (sql/021_export.sql,
// export_leases). Time is the database's clock, the one all replicas share. A taker bumps the
// token; every cursor write checks holder and token under the row's lock (fenced), so a holder
// that lost its lease while paused cannot move the cursor even if it still sends.

export interface Lease { org: string, sink: string, holder: string, token: string }

export class LeaseLost extends Error {
  constructor (sink: string) { super(`export lease for sink ${sink} is held by another exporter`); this.name = 'LeaseLost' }
}

/** A holder name that says which process holds a lease: host, pid and a random tag. */
export function holderName (): string {
  return `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`
}

/** Takes the lease when free or expired (or already ours), for `ttlMs`; null when another holds it. */
export async function acquire (sql: Sql, org: string, sink: string, holder: string, ttlMs: number): Promise<Lease | null> {
  const rows = await sql<{ token: string }[]>`INSERT INTO export_leases AS l (organization_id, sink, holder, token, expires_at)
    VALUES (${org}, ${sink}, ${holder}, 1, now() + ${ttlMs} * interval '1 millisecond')
    ON CONFLICT (organization_id, sink) DO UPDATE
      SET holder = excluded.holder, expires_at = excluded.expires_at,
          token = CASE WHEN l.holder = excluded.holder THEN l.token ELSE l.token + 1 END
      WHERE l.expires_at < now() OR l.holder = excluded.holder
    RETURNING token::text`
  if (rows.length === 0) return null
  await sql`INSERT INTO export_cursors (organization_id, sink) VALUES (${org}, ${sink}) ON CONFLICT DO NOTHING`
  return { org, sink, holder, token: rows[0].token }
}

/** Extends the lease; false when it passed to another holder meanwhile. */
export async function renew (sql: Sql, lease: Lease, ttlMs: number): Promise<boolean> {
  const rows = await sql`UPDATE export_leases SET expires_at = now() + ${ttlMs} * interval '1 millisecond'
    WHERE organization_id = ${lease.org} AND sink = ${lease.sink} AND holder = ${lease.holder} AND token = ${lease.token}::bigint
    RETURNING 1`
  return rows.length === 1
}

/** Lets the lease go at once (a graceful stop), so another replica takes over without waiting. */
export async function release (sql: Sql, lease: Lease): Promise<void> {
  await sql`UPDATE export_leases SET expires_at = now() - interval '1 second'
    WHERE organization_id = ${lease.org} AND sink = ${lease.sink} AND holder = ${lease.holder} AND token = ${lease.token}::bigint`
}

/**
 * Inside a transaction: locks the lease row and throws LeaseLost unless this holder still has it,
 * unexpired. A taker's UPDATE waits for this lock, so nothing can take the lease between this
 * check and the commit of what follows it.
 */
export async function fence (tx: ExportTx, lease: Lease, ttlMs: number): Promise<void> {
  const rows = await tx<{ ok: boolean }[]>`SELECT (holder = ${lease.holder} AND token = ${lease.token}::bigint AND expires_at > now()) AS ok
    FROM export_leases WHERE organization_id = ${lease.org} AND sink = ${lease.sink} FOR UPDATE`
  if (rows.length !== 1 || !rows[0].ok) throw new LeaseLost(lease.sink)
  await tx`UPDATE export_leases SET expires_at = now() + ${ttlMs} * interval '1 millisecond'
    WHERE organization_id = ${lease.org} AND sink = ${lease.sink}`
}
