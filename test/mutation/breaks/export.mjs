// Breaks of the export's promises: the cursor never passes a row that can still commit or one
// waiting for a retry, a holder that lost its lease cannot move the cursor or take the lease
// back, and Stripe's units per customer and month round the exact sum once. Each must make the
// named tests fail.
const FAULTS = ['test/export-faults.test.ts']
const STRIPE = ['test/export-stripe.test.ts']
export const BREAKS = [
  {
    name: 'export: the first read takes the lowest transaction id before the horizon (a transaction committing between them is skipped)',
    file: 'src/export/rows.ts',
    search: "    const h = await horizon(sql)\n    const [first] = await sql.unsafe<Array<{ x: string | null }>>(\n      'SELECT min(export_xid)::text AS x FROM usage_events WHERE organization_id = $1 AND export_xid IS NOT NULL', [org])\n",
    replace: "    const [first] = await sql.unsafe<Array<{ x: string | null }>>(\n      'SELECT min(export_xid)::text AS x FROM usage_events WHERE organization_id = $1 AND export_xid IS NOT NULL', [org])\n    const h = await horizon(sql)\n",
    tests: ['test/export-horizon.test.ts'],
  },
  {
    name: 'export: the cursor reads past the oldest open transaction (a late-committing row is skipped)',
    file: 'src/export/rows.ts',
    search: 'const hi = lo + window < h ? lo + window : h',
    replace: 'const hi = lo + window',
    tests: FAULTS,
  },
  {
    name: 'export: the cursor moves past a row answered retry',
    file: 'src/export/progress.ts',
    search: 'const cursor = run === rows.length ? batch.end : run === 0 ? null : rows[run - 1].at',
    replace: 'const cursor = batch.end',
    tests: [...STRIPE, 'test/export-cloudevents.test.ts'],
  },
  {
    name: 'export: acknowledged rows past the cursor are sent again',
    file: 'src/export/rows.ts',
    search: 'AND NOT EXISTS (SELECT 1 FROM export_acks a WHERE a.organization_id = $1 AND a.sink = $6 AND a.event_id = e.event_id)',
    replace: '',
    tests: STRIPE,
  },
  {
    name: 'export: a holder whose lease passed on still writes the cursor (no fencing)',
    file: 'src/export/lease.ts',
    search: 'if (rows.length !== 1 || !rows[0].ok) throw new LeaseLost(lease.sink)',
    replace: '',
    tests: FAULTS,
  },
  {
    name: 'export: a live lease can be taken by another holder',
    file: 'src/export/lease.ts',
    search: 'WHERE l.expires_at < now() OR l.holder = excluded.holder',
    replace: '',
    tests: FAULTS,
  },
  {
    name: 'export: each Stripe row rounded alone (drift)',
    file: 'src/export/stripe-units.ts',
    search: 'return { units: rounded - total.sent, after: { exact, sent: rounded } }',
    replace: 'return { units: BigInt(roundDecimal(b, 0)), after: { exact, sent: total.sent + BigInt(roundDecimal(b, 0)) } }',
    tests: STRIPE,
  },
  {
    name: 'export: Stripe running totals not kept across batches (drift)',
    file: 'src/export/stripe-sink.ts',
    search: 'SET exact_units = t.exact_units + excluded.exact_units, sent_units = t.sent_units + excluded.sent_units',
    replace: 'SET exact_units = t.exact_units + excluded.exact_units, sent_units = t.sent_units',
    tests: STRIPE,
  },
  {
    name: 'export: every empty stretch is written down (a caught-up exporter chases the horizon its own writes move)',
    file: 'src/export/exporter.ts',
    search: 'if (Date.now() - savedAt >= leaseMs) {',
    replace: 'if (true) {',
    tests: FAULTS,
  },
  {
    name: 'export: Stripe\'s duplicate-identifier answer is taken as a refusal (a send whose answer was lost is set aside)',
    file: 'src/export/stripe-sink.ts',
    search: "return status === 400 && /identifier/i.test(body) && /(already|duplicate)/i.test(body)",
    replace: 'return false',
    tests: STRIPE,
  },
]
