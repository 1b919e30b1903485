// Breaks of session 11's fixes: a reservation batch rolled back as a deadlock victim runs again.
export const BREAKS = [
  {
    name: 'budgets: a batch chosen as a deadlock victim fails its admissions instead of running again',
    file: 'src/budgets/reserver.ts',
    search: 'const RETRIES = 3',
    replace: 'const RETRIES = 1',
    tests: ['test/budgets-holds.test.ts'],
  },
  {
    name: 'verify: the group rollups are not checked',
    file: 'src/usage/reports/verify.ts',
    search: "const groups = await verifyGroups(sql, from, lo, to, limit)",
    replace: 'const groups = null as Awaited<ReturnType<typeof verifyGroups>>',
    tests: ['test/verify.test.ts'],
  },
  {
    name: 'export: the exporter runs on the primary pool (a stuck exporter starves the ledger)',
    file: 'src/main.ts',
    search: 'sql: booted.exportSql, organizationId',
    replace: 'sql: booted.sql, organizationId',
    tests: ['test/export-pool.test.ts'],
  },
  {
    name: 'export: a Stripe retry after a lost answer goes to the customer the mapping names now',
    file: 'src/export/stripe-sink.ts',
    search: 'const attempted = fresh === null ? await loadAttempts(o, rows) : new Map<string, string>()',
    replace: 'const attempted = new Map<string, string>()',
    tests: ['test/attack-s11-lost-answer-retarget.test.ts', 'test/attack-s11-lost-answer-handover.test.ts'],
  },
  // Survives, on purpose: the lease check in the same insert (the next break) already keeps a
  // stale holder from recording anything once another holds the lease, and a holder's insert holds
  // the lease row shared until it commits, so a taker's lookup always sees what it wrote. Sending to
  // the customer the insert returns is the same statement's answer, kept as a second line.
  {
    name: 'export: a Stripe row goes to the customer this holder computed, not the one recorded (a stale holder recorded another)',
    file: 'src/export/stripe-sink.ts',
    search: 'const key = `${recorded.get(rows[i].eventId) ?? customer}|${rows[i].createdAt.slice(0, 7)}`',
    replace: 'const key = `${customer}|${rows[i].createdAt.slice(0, 7)}`',
    tests: ['test/attack-s11b-stale-holder.test.ts'],
  },
  {
    name: 'export: a holder that lost its lease still records Stripe attempts',
    file: 'src/export/stripe-sink.ts',
    search: 'WHERE ${ctx.lease === undefined} OR EXISTS (SELECT 1 FROM export_leases l',
    replace: 'WHERE true OR EXISTS (SELECT 1 FROM export_leases l',
    tests: ['test/attack-s11b-stale-holder.test.ts'],
  },
  {
    name: 'export: a refused retry after a lost answer is set aside without saying Stripe may hold it',
    file: 'src/export/stripe-sink.ts',
    search: 'results[i] = attempted.has(row.eventId)',
    replace: 'results[i] = false',
    tests: ['test/attack-s11b-age-edge.test.ts'],
  },
]
