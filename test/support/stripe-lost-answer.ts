import { randomUUID } from 'node:crypto'
import { createTestDb, type TestDb } from './db.js'
import { FakeStripe } from './billing-receivers.js'
import { seedLedger } from './seed.js'
import { LogSink } from './sidecar.js'
import { createLogger } from '../../src/lib/log.js'
import { startExporter } from '../../src/export/exporter.js'
import { stripeSink } from '../../src/export/stripe-sink.js'
import { setCustomer } from '../../src/export/billing-customers.js'
import { exportStatus } from '../../src/export/status.js'
import { roundDecimal, sumDecimals } from '../../src/lib/decimal.js'

// The Stripe export under attack (test/attack-s11*.test.ts): a ledger of 0.6 micro-USD rows with
// one answer lost, the books Stripe and the exporter's totals keep, and a run of the exporter.

export const KEY = 'sk_test_exporttests0123456789'
export const log = (): ReturnType<typeof createLogger> => createLogger('warn', new LogSink())

export async function waitFor (what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

export interface Setup { db: TestDb, stripe: FakeStripe, url: string, org: string, first: string, others: string[] }

/**
 * One row `first` in a transaction of its own, then `others` rows in a later one: every row is
 * 0.6 micro-USD billed (markup 0), so each running total rounds visibly. All bill to the
 * organization's customer cus_a.
 */
export async function setup (t: any, org: string, othersCount: number, firstAgo: string, othersAgo: string): Promise<Setup> {
  const db = await createTestDb({ migrated: true })
  const stripe = new FakeStripe(KEY)
  const url = await stripe.listen()
  t.teardown(async () => { await stripe.close(); await db.drop() })
  await seedLedger(db.sql, { organizationId: org, rows: 0, from: '2026-01-01', days: 1 })
  const insert = async (sql: any, id: string, ago: string, n: number): Promise<void> => {
    await sql`INSERT INTO usage_events (event_id, generation_id, organization_id, external_user_id, endpoint, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
      VALUES (${id}, ${'gen-s11-' + id}, ${org}, 'x', 'chat/completions', false, 200, 'ok', 'inline', '0.0000006', '0', now() - ${ago}::interval + ${n}::int * interval '1 millisecond')`
  }
  const first = randomUUID()
  await insert(db.sql, first, firstAgo, 0)
  const others = Array.from({ length: othersCount }, () => randomUUID())
  await db.sql.begin(async (tx) => { let n = 0; for (const id of others) await insert(tx, id, othersAgo, n++) })
  await setCustomer(db.sql, org, 'organization', '', 'cus_a')
  return { db, stripe, url, org, first: 'gen-s11-' + first, others: others.map((o) => 'gen-s11-' + o) }
}

/** What Stripe holds per customer and month, what the exporter's totals say, and the exact sums of the rows Stripe holds. */
export async function books (s: Setup): Promise<{ stripe: Record<string, string>, totals: Record<string, string>, exact: Record<string, string> }> {
  const month = (ts: number): string => new Date(ts * 1000).toISOString().slice(0, 7)
  const stripe: Record<string, bigint> = {}
  const exactParts: Record<string, string[]> = {}
  for (const e of s.stripe.events.values()) {
    const k = `${e.customer}|${month(e.timestamp)}`
    stripe[k] = (stripe[k] ?? 0n) + BigInt(e.value)
    ;(exactParts[k] ??= []).push('0.6')
  }
  const totals: Record<string, string> = {}
  for (const r of await s.db.sql<{ k: string, sent: string }[]>`SELECT stripe_customer_id || '|' || to_char(month, 'YYYY-MM') AS k, sent_units::text AS sent
    FROM export_stripe_totals WHERE organization_id = ${s.org}`) totals[r.k] = r.sent
  const exact: Record<string, string> = {}
  for (const [k, parts] of Object.entries(exactParts)) exact[k] = roundDecimal(sumDecimals(parts), 0)
  return { stripe: Object.fromEntries(Object.entries(stripe).map(([k, v]) => [k, v.toString()])), totals, exact }
}

export async function exportWith (t: any, s: Setup, opts: { maxAgeMs?: number, now?: () => number } = {}): Promise<void> {
  const sink = stripeSink({ sql: s.db.sql, organizationId: s.org, secretKey: KEY, apiBase: s.url, eventName: 'llm_usage', value: 'billed_micro_usd', batchSize: 20, ...opts })
  const exporter = startExporter([sink], { sql: s.db.sql, organizationId: s.org, log: log(), leaseMs: 2000, pollMs: 20, backoff: { baseMs: 10, maxMs: 50 } })
  t.teardown(() => exporter.stop())
  await waitFor('the export to catch up', async () => (await exportStatus(s.db.sql, s.org))[0]?.pending === 0)
  await exporter.stop()
}

export function loseFirstAnswer (s: Setup, onLost: () => void = () => {}): Set<string> {
  const lost = new Set<string>()
  s.stripe.loseAnswer = (id) => {
    if (lost.size > 0 || id !== s.first) return false
    lost.add(id)
    onLost()
    return true
  }
  return lost
}
