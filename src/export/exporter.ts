import type { Sql } from '../db/connect.js'
import type { Logger } from '../lib/log.js'
import { backoffMs, type BackoffOptions } from './backoff.js'
import { acquire, holderName, LeaseLost, release, renew, type Lease } from './lease.js'
import { readCursor, recordBatch } from './progress.js'
import { readBatch, XID_WINDOW, type PlacedRow, type Position } from './rows.js'
import type { RowResult, Sink } from './sink.js'

// One exporter per configured sink, in the sidecar's process but off the request path: it reads
// committed ledger rows (never the request's memory), so a crash, a deploy or a receiver outage
// delays delivery and loses nothing. Across replicas the lease picks one holder per sink; the
// others poll for it and take over when its holder stops renewing.

export interface ExporterOptions {
  sql: Sql
  organizationId: string
  log: Logger
  /** How long a lease lasts without renewal; the holder renews at a third of it. */
  leaseMs?: number
  /** How often an idle exporter looks for new rows (and a non-holder for the lease). */
  pollMs?: number
  backoff?: BackoffOptions
  holder?: string
}

/** What /metrics and the usage page read of one sink, in this process. */
export interface SinkReadings {
  sink: string
  /** 1 while this process holds the sink's lease. */
  holding: boolean
  sent: number
  setAside: number
  /** Batches that ended with at least one row to retry (receiver down, 429, 5xx). */
  failures: number
  /** Seconds the oldest row read and not yet delivered has waited since it was created; 0 when caught up. */
  lagSeconds: number
  lastError: string | null
}

export interface Exporter {
  readings: () => SinkReadings[]
  stop: () => Promise<void>
  /** Resolves when every sink has nothing left below the horizon (tests, bench). */
  idle: () => Promise<void>
}

/** Rows read per query at least: a sink's batches are handed out of one read, not one query each. */
const PREFETCH = 2000

const sleep = (ms: number, signal: AbortSignal): Promise<void> => new Promise((resolve) => {
  if (signal.aborted) { resolve(); return }
  const t = setTimeout(done, ms)
  function done (): void { clearTimeout(t); signal.removeEventListener('abort', done); resolve() }
  signal.addEventListener('abort', done, { once: true })
})

export function startExporter (sinks: readonly Sink[], opts: ExporterOptions): Exporter {
  const stopping = new AbortController()
  const runs = sinks.map((sink) => runSink(sink, opts, stopping.signal))
  return {
    readings: () => runs.map((r) => r.readings),
    idle: () => Promise.all(runs.map((r) => r.idle())).then(() => {}),
    async stop () {
      stopping.abort()
      await Promise.all(runs.map((r) => r.done))
      await Promise.all(sinks.map((s) => s.close?.().catch(() => {})))
    },
  }
}

function runSink (sink: Sink, opts: ExporterOptions, stopping: AbortSignal) {
  const leaseMs = opts.leaseMs ?? 15_000
  const pollMs = opts.pollMs ?? 1000
  const backoff = opts.backoff ?? { baseMs: 500, maxMs: 60_000 }
  const holder = opts.holder ?? holderName()
  const { sql, log } = opts
  const readings: SinkReadings = { sink: sink.name, holding: false, sent: 0, setAside: 0, failures: 0, lagSeconds: 0, lastError: null }
  let idleWaiters: Array<() => void> = []
  let caughtUp = false
  const idle = (): Promise<void> => caughtUp ? Promise.resolve() : new Promise((resolve) => { idleWaiters.push(resolve) })
  const markIdle = (v: boolean): void => {
    caughtUp = v
    if (v) { const w = idleWaiters; idleWaiters = []; for (const f of w) f() }
  }

  const done = (async () => {
    let attempt = 0
    while (!stopping.aborted) {
      let lease: Lease | null = null
      try {
        lease = await acquire(sql, opts.organizationId, sink.name, holder, leaseMs)
      } catch (err) {
        log.warn({ sink: sink.name, err: describe(err) }, 'export: cannot reach the lease, retrying')
      }
      if (lease === null) { await sleep(pollMs, stopping); continue }
      readings.holding = true
      log.info({ sink: sink.name, holder, token: lease.token }, 'export: holding the lease')
      // The lease is renewed in the background while batches run; losing it aborts the batch.
      const lost = new AbortController()
      const onStop = (): void => lost.abort()
      stopping.addEventListener('abort', onStop, { once: true })
      const renewal = setInterval(() => {
        renew(sql, lease!, leaseMs).then((ok) => { if (!ok) lost.abort() }, () => {})
      }, Math.max(50, Math.floor(leaseMs / 3)))
      try {
        let cursor = await readCursor(sql, opts.organizationId, sink.name)
        // Rows read ahead of the sink, handed out a batch at a time; dropped after a retry (the
        // next read starts again from the cursor).
        let buffer: PlacedRow[] = []
        let bufferEnd: Position = cursor
        let window = XID_WINDOW
        let savedAt = Date.now()
        while (!lost.signal.aborted) {
          if (buffer.length === 0) {
            const read = await readBatch(sql, opts.organizationId, sink.name, cursor, Math.max(sink.batchSize, PREFETCH), window)
            window = read.window ?? window
            if (read.rows.length === 0) {
              if (read.end.xid !== cursor.xid || read.end.eventId !== cursor.eventId || read.end.createdAt !== cursor.createdAt) {
                // An empty stretch moves the cursor in memory; writing it down each time would take
                // a transaction id, move the horizon past it and make the next read find a new empty
                // stretch, forever, on a quiet cluster. It is written down at most once a lease.
                cursor = read.end
                if (Date.now() - savedAt >= leaseMs) {
                  cursor = (await recordBatch(sql, lease, leaseMs, sink, read, [])).cursor
                  savedAt = Date.now()
                }
                continue
              }
              readings.lagSeconds = 0
              markIdle(true)
              await sleep(pollMs, lost.signal)
              continue
            }
            buffer = read.rows
            bufferEnd = read.end
          }
          const rows = buffer.splice(0, sink.batchSize)
          const batch = { rows, end: buffer.length === 0 ? bufferEnd : rows[rows.length - 1].at }
          markIdle(false)
          readings.lagSeconds = Math.max(0, (Date.now() - Date.parse(batch.rows[0].row.createdAt)) / 1000)
          let results: RowResult[]
          try {
            results = await sink.send(batch.rows.map((r) => r.row), { signal: lost.signal, lease })
          } catch (err) {
            results = batch.rows.map(() => ({ status: 'retry', reason: describe(err) }))
          }
          const outcome = await recordBatch(sql, lease, leaseMs, sink, batch, results)
          cursor = outcome.cursor
          readings.sent += outcome.sent
          readings.setAside += outcome.setAside
          if (outcome.setAside > 0) log.warn({ sink: sink.name, rows: outcome.setAside }, 'export: rows refused for good, set aside')
          if (outcome.retry > 0) {
            buffer = []
            readings.failures++
            const first = results.find((r) => r.status === 'retry') as { reason: string, afterMs?: number }
            readings.lastError = first.reason
            const wait = backoffMs(attempt++, backoff, maxAfter(results))
            log.warn({ sink: sink.name, rows: outcome.retry, reason: first.reason, retryInMs: wait }, 'export: receiver did not take rows, retrying')
            await sleep(wait, lost.signal)
          } else {
            attempt = 0
          }
        }
      } catch (err) {
        if (!(err instanceof LeaseLost)) {
          log.warn({ sink: sink.name, err: describe(err) }, 'export: batch failed, retrying')
          readings.lastError = describe(err)
          await sleep(backoffMs(attempt++, backoff), stopping)
        } else {
          log.warn({ sink: sink.name }, 'export: lease lost to another exporter')
        }
      } finally {
        clearInterval(renewal)
        stopping.removeEventListener('abort', onStop)
        readings.holding = false
        markIdle(false)
        if (stopping.aborted) await release(sql, lease).catch(() => {})
      }
    }
  })()
  return { readings, done, idle }
}

function maxAfter (results: readonly RowResult[]): number | undefined {
  let max: number | undefined
  for (const r of results) if (r.status === 'retry' && r.afterMs !== undefined) max = Math.max(max ?? 0, r.afterMs)
  return max
}

function describe (err: unknown): string {
  const e = err as { code?: string, message?: string }
  return [e?.code, e?.message].filter(Boolean).join(': ') || String(err)
}
