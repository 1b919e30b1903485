import type { Sql } from './connect.js'
import type { Logger } from '../lib/log.js'

// Monthly partitions of usage_events are created ahead (this month and the next two) and old
// ones dropped (RETENTION_MONTHS) once a day. Every replica tries, at boot and every hour; an
// advisory lock picks one at a time and the date in usage_maintenance makes the others find the
// day's work done. The SQL functions doing the work live in sql/007, next to the table.

const MAINTENANCE_LOCK = 727_361_002
const MONTHS_AHEAD = 3
const TICK_MS = 60 * 60 * 1000

export interface MaintenanceOptions {
  /** Drop partitions that ended more than this many months before the current month began. */
  retentionMonths?: number
  now?: Date
  /** Run even if the day's maintenance already ran (tests, and an operator's explicit request). */
  force?: boolean
}

export interface MaintenanceResult {
  /** False when another replica holds the lock or the day's maintenance already ran. */
  ran: boolean
  created: string[]
  dropped: string[]
}

/** First day of the month `offset` months from `now`'s, in UTC, as YYYY-MM-DD. */
export function monthStart (now: Date, offset = 0): string {
  return new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + offset, 1)).toISOString().slice(0, 10)
}

export async function maintainPartitions (sql: Sql, opts: MaintenanceOptions = {}): Promise<MaintenanceResult> {
  const now = opts.now ?? new Date()
  const today = now.toISOString().slice(0, 10)
  return sql.begin(async (tx) => {
    const [{ locked }] = await tx<{ locked: boolean }[]>`select pg_try_advisory_xact_lock(${MAINTENANCE_LOCK}) as locked`
    if (!locked) return { ran: false, created: [], dropped: [] }
    const [last] = await tx<{ ran_on: string }[]>`select ran_on::text from usage_maintenance`
    if (!opts.force && last?.ran_on === today) return { ran: false, created: [], dropped: [] }
    // Creating a partition briefly locks usage_events against inserts: never queue behind a long
    // transaction for more than a moment (the ledger would wait too); the next tick retries.
    await tx`set local lock_timeout = '5s'`
    const created: string[] = []
    for (let i = 0; i < MONTHS_AHEAD; i++) {
      const month = monthStart(now, i)
      const [{ made }] = await tx<{ made: boolean }[]>`select usage_ensure_partition(${month}::date) as made`
      if (made) created.push(`usage_events_${month.slice(0, 7).replace('-', '_')}`)
    }
    let dropped: string[] = []
    if (opts.retentionMonths !== undefined) {
      const [row] = await tx<{ dropped: string[] }[]>`select usage_drop_partitions_before(${monthStart(now, -opts.retentionMonths)}::date) as dropped`
      dropped = row.dropped
    }
    const detail = { created, dropped, retentionMonths: opts.retentionMonths ?? null }
    await tx`insert into usage_maintenance (ran_on, ran_at, detail) values (${today}, ${now}, ${tx.json(detail)})
      on conflict (id) do update set ran_on = excluded.ran_on, ran_at = excluded.ran_at, detail = excluded.detail`
    return { ran: true, created, dropped }
  }) as Promise<MaintenanceResult>
}

export interface PartitionMaintainer { stop: () => void }

/** Runs maintenance now (awaited: boot needs this month's partition) and then every hour. */
export async function startPartitionMaintenance (sql: Sql, log: Logger, opts: { retentionMonths?: number }): Promise<PartitionMaintainer> {
  const run = async (): Promise<void> => {
    try {
      const r = await maintainPartitions(sql, opts)
      if (r.ran) log.info({ created: r.created, dropped: r.dropped, retentionMonths: opts.retentionMonths ?? null }, 'partition maintenance ran')
    } catch (err) {
      // Not fatal: the default partition takes any row, and the next tick tries again.
      const e = err as { code?: string, message?: string }
      log.warn({ reason: [e.code, e.message].filter(Boolean).join(': ') }, 'partition maintenance failed, will retry')
    }
  }
  await run()
  const timer = setInterval(() => { void run() }, TICK_MS)
  timer.unref()
  return { stop: () => clearInterval(timer) }
}
