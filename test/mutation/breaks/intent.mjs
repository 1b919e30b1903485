// Breaks of the journal's intent lines (a request journaled before it goes upstream; an intent
// with no outcome becomes an 'interrupted' row at the next start). `npm run mutate -- s8intent:`
const CRASH = 'test/intent-crash.test.ts'
const JOURNAL = 'test/journal-intent.test.ts'

// Left out: Exchange.withdrawIfGone never withdrawing. Its window (the client's close handled
// between dispatch() and the end of that event-loop turn) cannot be opened deterministically
// from outside the process; the journal side of a withdrawal is broken and caught below.
export const BREAKS = [
  {
    name: 's8intent: dispatch does not wait for the intent line to be written',
    file: 'src/proxy/metered.ts',
    search: '  ctx.ledger.afterJournal(() => guarded(res, ctx, () => {\n    if (exchange.withdrawIfGone()) return',
    replace: '  ;((go: () => void) => go())(() => guarded(res, ctx, () => {\n    if (exchange.withdrawIfGone()) return',
    tests: [CRASH],
  },
  {
    name: 's8intent: no intent line is written',
    file: 'src/proxy/metered.ts',
    search: '  ctx.ledger.intent(rec)\n',
    replace: '\n',
    tests: [CRASH],
  },
  {
    name: 's8intent: intents found at boot are not made rows',
    file: 'src/boot.ts',
    search: '  for (const r of replay.intents) ledger.record(fromIntent(r))',
    replace: '  void fromIntent',
    tests: [CRASH],
  },
  {
    name: 's8intent: the row never carries the estimate',
    file: 'src/usage/ledger/record.ts',
    search: 'estimated_cost_usd: isEstimateOnly(r) ? r.estimatedCostUsd ?? null : null,',
    replace: 'estimated_cost_usd: null,',
    tests: [JOURNAL, CRASH],
  },
  {
    name: 's8intent: an interrupted row whose generation was named also carries an estimate',
    file: 'src/usage/ledger/record.ts',
    search: "return r.outcome === 'interrupted' && r.generationId === null && r.costUsd === null",
    replace: "return r.outcome === 'interrupted' && r.costUsd === null",
    tests: [JOURNAL],
  },
  {
    name: 's8intent: every row carries the estimate',
    file: 'src/usage/ledger/record.ts',
    search: 'estimated_cost_usd: isEstimateOnly(r) ? r.estimatedCostUsd ?? null : null,',
    replace: 'estimated_cost_usd: r.estimatedCostUsd ?? null,',
    tests: [JOURNAL],
  },
  {
    name: 's8intent: a pending line does not supersede the intent (the estimate row wins the event id)',
    file: 'src/usage/ledger/journal.ts',
    search: '    for (const id of pendings.keys()) intents.delete(id)\n',
    replace: '\n',
    tests: [JOURNAL, CRASH],
  },
  {
    name: 's8intent: a final line does not supersede the intent',
    file: 'src/usage/ledger/journal.ts',
    search: 'for (const id of finals.keys()) { pendings.delete(id); intents.delete(id) }',
    replace: 'for (const id of finals.keys()) { pendings.delete(id) }',
    tests: [JOURNAL],
  },
  {
    name: 's8intent: a withdrawal does not cancel its intent',
    file: 'src/usage/ledger/journal.ts',
    search: '    for (const id of withdrawn) { intents.delete(id); if',
    replace: '    for (const id of withdrawn) { if',
    tests: [JOURNAL],
  },
  {
    name: 's8intent: withdrawal lines keep their segments forever',
    file: 'src/usage/ledger/journal.ts',
    search: 'if (!finals.has(id) && !pendings.has(id)) this.committed(id) }',
    replace: '}',
    tests: [JOURNAL],
  },
  {
    name: 's8intent: intent lines do not hold their segment (deleted while the request runs)',
    file: 'src/usage/ledger/journal.ts',
    search: '    this.lineIds.push(r.eventId)',
    replace: "    this.lineIds.push(kind === 'i' ? 'unheld' : r.eventId)",
    tests: [JOURNAL],
  },
  {
    name: 's8intent: the admission does not note its estimate on the record',
    file: 'src/budgets/limits.ts',
    search: '    rec.estimatedCostUsd = amount',
    replace: '    void amount',
    tests: [CRASH],
  },
  {
    name: 's8intent: verify does not list estimate-only rows',
    file: 'src/usage/reports/verify-command.ts',
    search: '    for (const row of r.interrupted.rows) out(formatEstimateOnly(row) + \'\\n\')',
    replace: '    void formatEstimateOnly',
    tests: [CRASH],
  },
  {
    name: 's8intent: verify lists interrupted rows whose generation was named',
    file: 'src/usage/reports/verify.ts',
    search: "const range = sql`outcome = 'interrupted' and generation_id is null and cost_usd is null",
    replace: "const range = sql`outcome = 'interrupted' and cost_usd is not distinct from cost_usd",
    tests: [CRASH],
  },
]
