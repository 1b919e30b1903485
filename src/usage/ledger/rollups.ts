import type { Sql } from '../../db/connect.js'
import type { Logger } from '../../lib/log.js'

// Folds usage_rollup_deltas (appended by every insert, in its transaction) into
// usage_daily_rollups. Every replica ticks; an advisory lock lets one fold at a time. A missed or
// failed tick costs nothing but a few more delta rows for readers to add: reads are exact either
// way (usage_daily_totals), so this only keeps the delta table small.

const COMPACT_LOCK = 727_361_003
const DEFAULT_EVERY_MS = 2_000

/** Folds every committed delta; null when another replica was folding at that moment. */
export async function compactRollups (sql: Sql): Promise<number | null> {
  return sql.begin(async (tx) => {
    const [{ locked }] = await tx<{ locked: boolean }[]>`select pg_try_advisory_xact_lock(${COMPACT_LOCK}) as locked`
    if (!locked) return null
    const [{ n }] = await tx<{ n: string }[]>`select usage_rollup_compact() as n`
    return Number(n)
  }) as Promise<number | null>
}

export interface RollupCompactor { stop: () => Promise<void> }

export function startRollupCompaction (sql: Sql, log: Logger, everyMs = DEFAULT_EVERY_MS): RollupCompactor {
  let running: Promise<void> = Promise.resolve()
  let failures = 0
  const tick = (): void => {
    running = compactRollups(sql).then(() => { failures = 0 }, (err: unknown) => {
      // Postgres away: the ledger says so already; one line here per outage, not one per tick.
      if (failures++ === 0) log.warn({ reason: (err as Error).message }, 'rollup compaction failed, will retry')
    })
  }
  const timer = setInterval(tick, everyMs)
  timer.unref()
  return { async stop () { clearInterval(timer); await running } }
}
