import type { Sql } from '../db/connect.js'
import { customerFor, loadCustomers } from './billing-customers.js'
import { post } from './http.js'
import { exportId, type ExportRow, type ExportTx, type RowResult, type SendContext, type Sink } from './sink.js'
import { microUnits, nextUnits, type Running } from './stripe-units.js'

// Stripe Billing meter events (POST /v1/billing/meter_events, form-encoded, one event per
// request). Only rows that carry a billed cost are sent; the others are 'ok' without a request.
// `identifier` is the row's stable id, so a quick retry is deduped by Stripe (its window is about
// 24 hours); the export layer never resends an acknowledged row on its own. Rows whose customer
// and month differ are sent in parallel; within one customer and month, in order, because each
// row's value depends on the running total before it (stripe-units.ts).

export interface StripeOptions {
  sql: Sql
  organizationId: string
  secretKey: string
  apiBase: string
  eventName: string
  value: 'billed_micro_usd' | 'tokens'
  /** Rows created longer ago than this are set aside, not sent: Stripe takes the past 35 days. */
  maxAgeMs?: number
  concurrency?: number
  batchSize?: number
  /**
   * `stored` (the exporter): running totals from export_stripe_totals, updated by settle.
   * `fresh` (a replay): totals start at zero for the replayed rows and stay in memory.
   */
  totals?: 'stored' | 'fresh'
  now?: () => number
}

export const STRIPE_MAX_AGE_MS = 35 * 24 * 3600 * 1000
/** A margin under Stripe's limit, so a row at the edge is not refused in flight. */
const AGE_MARGIN_MS = 3600 * 1000

interface Pending { key: string, customer: string, month: string, exact: string, units: bigint }

export function stripeSink (o: StripeOptions): Sink {
  const url = `${o.apiBase.replace(/\/+$/, '')}/v1/billing/meter_events`
  const maxAge = (o.maxAgeMs ?? STRIPE_MAX_AGE_MS) - AGE_MARGIN_MS
  const now = o.now ?? Date.now
  // What the last send computed per row, for settle to add to the totals of the rows that went.
  let pending = new Map<string, Pending>()
  const fresh = o.totals === 'fresh' ? new Map<string, Running>() : null

  async function send (rows: readonly ExportRow[], ctx: SendContext): Promise<RowResult[]> {
    const results: RowResult[] = rows.map(() => ({ status: 'ok' }))
    pending = new Map()
    const customers = await loadCustomers(o.sql, o.organizationId)
    // A row sent before without an answer goes to the customer it was sent to (sql/024).
    const attempted = fresh === null ? await loadAttempts(o, rows) : new Map<string, string>()
    const chosen = new Map<number, string>()
    rows.forEach((row, i) => {
      if (row.billedCostUsd === null) return // nothing to bill: not a meter event
      const earlier = attempted.get(row.eventId)
      const created = Date.parse(row.createdAt)
      if (earlier === undefined && now() - created > maxAge) {
        results[i] = { status: 'rejected', reason: `older than Stripe accepts (meter events must be within the past 35 days): created ${row.createdAt}` }
        return
      }
      const customer = earlier ?? customerFor(customers, row)
      if (customer === null) {
        results[i] = { status: 'rejected', reason: 'no Stripe customer for this row: map the organization, the user or a group (PUT /admin/v1/billing/customers/...)' }
        return
      }
      chosen.set(i, customer)
    })
    // The attempt recorded is the one a row goes to: another holder (one that lost its lease
    // without knowing yet) may have written one between the lookup above and this write.
    const recorded = fresh === null ? await recordAttempts(o, rows, chosen, ctx) : new Map<string, string>()
    const groups = new Map<string, number[]>()
    for (const [i, customer] of chosen) {
      if (fresh === null && !recorded.has(rows[i].eventId)) {
        // Not written: this holder's lease passed to another exporter, which sends the row.
        results[i] = { status: 'retry', reason: 'export lease held by another exporter' }
        continue
      }
      const key = `${recorded.get(rows[i].eventId) ?? customer}|${rows[i].createdAt.slice(0, 7)}`
      const list = groups.get(key) ?? []
      list.push(i)
      groups.set(key, list)
    }
    const totals = fresh ?? await loadTotals(o, [...groups.keys()])
    const queue = [...groups.entries()]
    const worker = async (): Promise<void> => {
      for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
        const [key, indexes] = next
        const [customer, month] = key.split('|')
        let total = totals.get(key) ?? { exact: '0', sent: 0n }
        let blocked: RowResult | null = null
        for (const i of indexes) {
          if (blocked !== null || ctx.signal.aborted) { results[i] = blocked ?? { status: 'retry', reason: 'exporter stopping' }; continue }
          const row = rows[i]
          const exact = o.value === 'tokens' ? String(tokens(row)) : microUnits(row.billedCostUsd!)
          const { units, after } = nextUnits(total, exact)
          const answer = await post(url, form({
            event_name: o.eventName,
            'payload[stripe_customer_id]': customer,
            'payload[value]': units.toString(),
            identifier: exportId(row),
            timestamp: String(Math.floor(Math.min(Date.parse(row.createdAt), now()) / 1000)),
          }), { authorization: `Bearer ${o.secretKey}`, 'content-type': 'application/x-www-form-urlencoded' }, ctx.signal)
          if (answer.kind === 'ok' || alreadyDelivered(answer.status, answer.body)) {
            results[i] = { status: 'ok' }
            pending.set(row.eventId, { key, customer, month, exact, units })
            total = after
            fresh?.set(key, after)
          } else if (answer.kind === 'refused') {
            // Refused after a send that got no answer (past Stripe's 35 days now, say): Stripe may
            // still hold the first send, and nothing here can tell. The reason says so, for the
            // person reconciling: look the identifier up in Stripe before any replay.
            results[i] = attempted.has(row.eventId)
              ? { status: 'rejected', reason: `Stripe may hold this event under ${customer} (an earlier send got no answer); check identifier ${exportId(row)} in Stripe before replaying. The retry was refused: ${answer.reason}` }
              : { status: 'rejected', reason: answer.reason }
          } else {
            blocked = { status: 'retry', reason: answer.reason, afterMs: answer.afterMs }
            results[i] = blocked
          }
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(o.concurrency ?? 8, groups.size) }, worker))
    return results
  }

  async function settle (tx: ExportTx, rows: readonly ExportRow[], results: readonly RowResult[]): Promise<void> {
    const sums = new Map<string, { customer: string, month: string, exact: string[], units: bigint }>()
    rows.forEach((row, i) => {
      const p = pending.get(row.eventId)
      if (p === undefined || results[i].status !== 'ok') return
      const s = sums.get(p.key) ?? { customer: p.customer, month: p.month, exact: [], units: 0n }
      s.exact.push(p.exact)
      s.units += p.units
      sums.set(p.key, s)
    })
    for (const s of [...sums.values()].sort((a, b) => (a.customer + a.month).localeCompare(b.customer + b.month))) {
      await tx`INSERT INTO export_stripe_totals AS t (organization_id, sink, stripe_customer_id, month, exact_units, sent_units)
        SELECT ${o.organizationId}, 'stripe', ${s.customer}, ${s.month + '-01'}::date, sum(x::numeric), ${s.units.toString()}::bigint
        FROM unnest(${s.exact}::text[]) AS x
        ON CONFLICT (organization_id, sink, stripe_customer_id, month) DO UPDATE
          SET exact_units = t.exact_units + excluded.exact_units, sent_units = t.sent_units + excluded.sent_units`
    }
    // Answered (taken, a duplicate, or refused): nothing is in doubt any more for these rows.
    const answered = rows.filter((_, i) => results[i].status !== 'retry').map((r) => r.eventId)
    if (fresh === null && answered.length > 0) {
      await tx`DELETE FROM export_stripe_attempts WHERE organization_id = ${o.organizationId} AND event_id = ANY (${answered}::uuid[])`
    }
    pending = new Map()
  }

  return { name: 'stripe', batchSize: o.batchSize ?? 100, send, settle }
}

async function loadAttempts (o: StripeOptions, rows: readonly ExportRow[]): Promise<Map<string, string>> {
  const ids = rows.filter((r) => r.billedCostUsd !== null).map((r) => r.eventId)
  const out = new Map<string, string>()
  if (ids.length === 0) return out
  for (const r of await o.sql<{ event_id: string, customer: string }[]>`SELECT event_id::text, stripe_customer_id AS customer
    FROM export_stripe_attempts WHERE organization_id = ${o.organizationId} AND event_id = ANY (${ids}::uuid[])`) out.set(r.event_id, r.customer)
  return out
}

/**
 * Before any request: the customer each row is about to be sent to, unless one is recorded
 * already; answers the customer recorded for each row, which is the one to send to. Written only
 * while the exporter still holds its lease (checked under the lease row's lock, which a taker
 * waits for): a holder that lost it unknowingly would otherwise write an attempt after the new
 * holder was answered and cleared the row's, and leave it there for good.
 */
async function recordAttempts (o: StripeOptions, rows: readonly ExportRow[], chosen: Map<number, string>, ctx: SendContext): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  if (chosen.size === 0) return out
  // One line per event id (a statement may not update a row twice).
  const first = new Map<string, string>()
  for (const [i, customer] of chosen) if (!first.has(rows[i].eventId)) first.set(rows[i].eventId, customer)
  const ids = [...first.keys()]
  const customers = [...first.values()]
  // DO UPDATE to itself: RETURNING then answers the recorded customer of a conflicting row too.
  for (const r of await o.sql<{ event_id: string, customer: string }[]>`INSERT INTO export_stripe_attempts AS a (organization_id, event_id, stripe_customer_id)
    SELECT ${o.organizationId}, e::uuid, c FROM unnest(${ids}::text[], ${customers}::text[]) AS u(e, c)
    WHERE ${ctx.lease === undefined} OR EXISTS (SELECT 1 FROM export_leases l
      WHERE l.organization_id = ${ctx.lease?.org ?? ''} AND l.sink = ${ctx.lease?.sink ?? ''} AND l.holder = ${ctx.lease?.holder ?? ''}
        AND l.token = ${ctx.lease?.token ?? '0'}::bigint AND l.expires_at > now() FOR SHARE)
    ON CONFLICT (organization_id, event_id) DO UPDATE SET stripe_customer_id = a.stripe_customer_id
    RETURNING event_id::text, stripe_customer_id AS customer`) out.set(r.event_id, r.customer)
  return out
}

async function loadTotals (o: StripeOptions, keys: string[]): Promise<Map<string, Running>> {
  const out = new Map<string, Running>()
  if (keys.length === 0) return out
  const rows = await o.sql<{ k: string, exact: string, sent: string }[]>`SELECT stripe_customer_id || '|' || to_char(month, 'YYYY-MM') AS k,
      exact_units::text AS exact, sent_units::text AS sent
    FROM export_stripe_totals WHERE organization_id = ${o.organizationId} AND sink = 'stripe'
      AND stripe_customer_id || '|' || to_char(month, 'YYYY-MM') = ANY (${keys}::text[])`
  for (const r of rows) out.set(r.k, { exact: r.exact, sent: BigInt(r.sent) })
  return out
}

function tokens (row: ExportRow): number {
  return row.totalTokens ?? ((row.promptTokens ?? 0) + (row.completionTokens ?? 0))
}

function form (fields: Record<string, string>): string {
  return new URLSearchParams(fields).toString()
}

/**
 * Stripe answers a resend of an identifier it still holds with a 400 invalid_request_error, "An
 * event already exists with identifier ...": that event is delivered (a send that timed out had
 * gone through), so the row is acknowledged, not set aside.
 */
function alreadyDelivered (status: number, body: string): boolean {
  return status === 400 && /identifier/i.test(body) && /(already|duplicate)/i.test(body)
}
