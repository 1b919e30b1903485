import type { Sql } from '../db/connect.js'

// One admin change and its audit row, committed together: the change is made in a transaction
// that also appends the row, so no change lands without its row (and no row without its change).
// Changes to one target take turns (a transaction-scoped advisory lock on the organization and
// the target): the value a change reads as `before` is the `after` of the change committed just
// before it, so the trail reads as a chain, whatever replicas write at once.

export async function auditedChange<T> (sql: Sql, org: string, target: string, change: (tx: Sql) => Promise<T>): Promise<T> {
  return await sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtextextended(${'usage-proxy admin change ' + org + ' ' + target}, 0))`
    return await change(tx as unknown as Sql)
  }) as T
}
