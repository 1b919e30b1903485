import type { Sql } from '../db/connect.js'
import { backoffMs, type BackoffOptions } from './backoff.js'
import { readCursor } from './progress.js'
import { readHandledSince, START, type Position } from './rows.js'
import type { RowResult, Sink } from './sink.js'

// A deliberate resend: every row created from a date on that the sink has already handled
// (acknowledged or set aside), sent again under the same ids. Rows the cursor has not reached are
// left to the exporter. Receivers differ in what a resend does, so the command warns first
// (dedupeWarnings); a row set aside before that goes through now leaves the set-aside list.

export interface ReplayReport { rows: number, sent: number, rejected: number, recoveredFromSetAside: number }

export interface DedupeWindow { sink: string, windowHours: number | null, receiver: string }

/** What a receiver does with an id it has seen: Stripe forgets after about 24 hours. */
export const DEDUPE: Record<string, DedupeWindow> = {
  stripe: { sink: 'stripe', windowHours: 24, receiver: 'Stripe (meter event identifiers are deduplicated for about 24 hours)' },
  cloudevents: { sink: 'cloudevents', windowHours: null, receiver: 'the CloudEvents receiver (OpenMeter and Lago dedupe by id / transaction_id; a receiver that does not will count them again)' },
  otel: { sink: 'otel', windowHours: null, receiver: 'the OpenTelemetry receiver (OTLP metrics carry no id: every resent row is counted again in the dashboards)' },
}

/** Warnings to print before a replay: how many rows fall outside the receiver's dedupe window. */
export async function dedupeWarnings (sql: Sql, org: string, sink: string, from: string): Promise<string[]> {
  const [c] = await sql<{ n: string, old: string }[]>`SELECT count(*)::text AS n,
      count(*) FILTER (WHERE recorded_at < now() - interval '24 hours')::text AS old
    FROM usage_events WHERE organization_id = ${org} AND created_at >= ${from}::text::timestamptz`
  const d = DEDUPE[sink]
  const out: string[] = []
  if (d?.windowHours === 24) {
    if (Number(c.old) > 0) {
      out.push(`${c.old} of ${c.n} rows were recorded more than 24 hours ago: ${d.receiver}; Stripe will very likely count them again, adding to the customer's meter.`)
    }
    out.push('Rows older than 35 days are set aside again: Stripe does not accept them.')
  } else if (d !== undefined) {
    out.push(`${c.n} rows will be resent under their ids: ${d.receiver}.`)
  } else {
    out.push(`${c.n} rows will be resent: a receiver that does not dedupe by id counts them again.`)
  }
  return out
}

export async function replay (sql: Sql, org: string, sink: Sink, from: string, opts: { backoff?: BackoffOptions, maxAttempts?: number, signal?: AbortSignal } = {}): Promise<ReplayReport> {
  const cursor = await readCursor(sql, org, sink.name)
  const backoff = opts.backoff ?? { baseMs: 500, maxMs: 30_000 }
  const signal = opts.signal ?? new AbortController().signal
  const report: ReplayReport = { rows: 0, sent: 0, rejected: 0, recoveredFromSetAside: 0 }
  let after: Position = START
  for (;;) {
    const rows = await readHandledSince(sql, org, sink.name, from, cursor, after, sink.batchSize)
    if (rows.length === 0) break
    after = rows[rows.length - 1].at
    let todo = rows
    for (let attempt = 0; todo.length > 0; attempt++) {
      let results: RowResult[]
      try { results = await sink.send(todo.map((r) => r.row), { signal }) } catch (err) { results = todo.map(() => ({ status: 'retry', reason: String(err) })) }
      const okIds = todo.filter((_, i) => results[i].status === 'ok').map((r) => r.row.eventId)
      report.sent += okIds.length
      report.rejected += results.filter((r) => r.status === 'rejected').length
      if (okIds.length > 0) {
        const gone = await sql`DELETE FROM export_set_aside WHERE organization_id = ${org} AND sink = ${sink.name} AND event_id = ANY (${okIds}::uuid[]) RETURNING 1`
        report.recoveredFromSetAside += gone.length
      }
      const retry = todo.filter((_, i) => results[i].status === 'retry')
      if (retry.length > 0) {
        if (opts.maxAttempts !== undefined && attempt + 1 >= opts.maxAttempts) throw new Error(`replay stopped: ${retry.length} rows still not taken after ${attempt + 1} attempts (${(results.find((r) => r.status === 'retry') as { reason: string }).reason})`)
        const afterMs = Math.max(0, ...results.map((r) => r.status === 'retry' ? r.afterMs ?? 0 : 0))
        await new Promise((resolve) => setTimeout(resolve, backoffMs(attempt, backoff, afterMs)))
      }
      todo = retry
    }
    report.rows += rows.length
  }
  return report
}
