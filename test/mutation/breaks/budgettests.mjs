// Breaks of the budget guarantees, the refusal's wording and money rule, and the ledger (issue 21
// item 11): `npm run mutate -- s8bt:`. The SQL entries target the definitions in effect: the
// admission, sweep, recount and period start of sql/006, the settlement of sql/011 (which
// replaces 006's). Once the money functions move to sql/functions/, these move with them.
const LOCKS = 'test/budget-locks.test.ts'
const MODEL = 'test/budget-model.test.ts'
const SETTLE = 'test/budget-settlement.test.ts'
const ADMISSION = 'test/budgets-admission.test.ts'
const REFUSAL = 'test/budget-refusal.test.ts'
const MONEY = 'test/money-format.test.ts'

export const BREAKS = [
  // The admission: budget_reserve() and budget_reserve_many() (sql/006)
  {
    name: 's8bt: no FOR UPDATE on the organization counter',
    file: 'sql/006_budgets.sql',
    search: "AND c.period = ob.period AND c.period_start = os FOR UPDATE;\n    IF NOT FOUND",
    replace: "AND c.period = ob.period AND c.period_start = os;\n    IF NOT FOUND",
    tests: [LOCKS],
  },
  {
    name: 's8bt: no FOR UPDATE on the user counter',
    file: 'sql/006_budgets.sql',
    search: "AND c.period = ub.period AND c.period_start = us FOR UPDATE;\n    IF NOT FOUND",
    replace: "AND c.period = ub.period AND c.period_start = us;\n    IF NOT FOUND",
    tests: [LOCKS],
  },
  {
    name: 's8bt: organization check > becomes >= (landing exactly on the limit refused)',
    file: 'sql/006_budgets.sql',
    search: 'oc.spent_usd + oc.reserved_usd + p_amount > ob.limit_usd',
    replace: 'oc.spent_usd + oc.reserved_usd + p_amount >= ob.limit_usd',
    tests: [SETTLE],
  },
  {
    name: 's8bt: user check > becomes >=',
    file: 'sql/006_budgets.sql',
    search: 'uc.spent_usd + uc.reserved_usd + p_amount > ub.limit_usd',
    replace: 'uc.spent_usd + uc.reserved_usd + p_amount >= ub.limit_usd',
    tests: [SETTLE],
  },
  {
    name: 's8bt: user check ignores the holds of requests in flight',
    file: 'sql/006_budgets.sql',
    search: 'uc.spent_usd + uc.reserved_usd + p_amount > ub.limit_usd',
    replace: 'uc.spent_usd + p_amount > ub.limit_usd',
    tests: [LOCKS, MODEL],
  },
  {
    name: 's8bt: a refused request keeps its reservation row',
    file: 'sql/006_budgets.sql',
    search: "  IF ob.scope IS NOT NULL AND oc.spent_usd + oc.reserved_usd + p_amount > ob.limit_usd THEN\n    DELETE FROM budget_reservations r WHERE r.event_id = p_event;",
    replace: "  IF ob.scope IS NOT NULL AND oc.spent_usd + oc.reserved_usd + p_amount > ob.limit_usd THEN",
    tests: [MODEL],
  },
  {
    name: "s8bt: the default-user budget wins over the user's own",
    file: 'sql/006_budgets.sql',
    search: "ORDER BY b.scope DESC LIMIT 1;  -- 'user' before 'default-user'",
    replace: 'ORDER BY b.scope ASC LIMIT 1;',
    tests: [MODEL],
  },
  {
    name: 's8bt: batch rows answer under the wrong index',
    file: 'sql/006_budgets.sql',
    search: 'RETURN QUERY SELECT item.i, r.* FROM budget_reserve(',
    replace: 'RETURN QUERY SELECT (SELECT count(*)::int FROM budget_reservations) - 1, r.* FROM budget_reserve(',
    tests: [LOCKS],
  },
  // Periods (sql/006)
  {
    name: "s8bt: period start in the session's time zone",
    file: 'sql/006_budgets.sql',
    search: "ELSE date_trunc(p_period, p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    replace: 'ELSE date_trunc(p_period, p_at)',
    tests: [MODEL],
  },
  // The recount (sql/006)
  {
    name: 's8bt: no recount lock: a row settling meanwhile is lost',
    file: 'sql/006_budgets.sql',
    search: '  LOCK TABLE budget_counters IN EXCLUSIVE MODE;\n',
    replace: '',
    tests: [LOCKS],
  },
  {
    name: "s8bt: recount writes a different period's counter",
    file: 'sql/006_budgets.sql',
    search: 's := budget_period_start(b.period, now());',
    replace: "s := budget_period_start(b.period, now() - interval '40 days');",
    tests: [MODEL],
  },
  // The sweeper (sql/006)
  {
    name: 's8bt: the sweeper releases holds that have not expired',
    file: 'sql/006_budgets.sql',
    search: 'WHERE expires_at < now() ORDER BY expires_at LIMIT p_limit',
    replace: 'ORDER BY expires_at LIMIT p_limit',
    tests: [MODEL],
  },
  {
    name: 's8bt: the sweeper deletes reservations without giving back their holds',
    file: 'sql/006_budgets.sql',
    search: 'SET reserved_usd = greatest(c.reserved_usd - s.amount, 0)',
    replace: 'SET reserved_usd = c.reserved_usd',
    tests: [MODEL],
  },
  // Settlement (budget_settle as sql/011 defines it)
  {
    name: 's8bt: settlement counts a replay taken back by the generation claim',
    file: 'sql/011_budget_settle_replays.sql',
    search: '\n       AND EXISTS (SELECT 1 FROM usage_events e WHERE e.event_id = n.event_id AND e.created_at = n.created_at)',
    replace: '',
    tests: [SETTLE, MODEL],
  },
  {
    name: 's8bt: settlement does not release the reservation',
    file: 'sql/011_budget_settle_replays.sql',
    search: 'DELETE FROM budget_reservations r USING new_rows n WHERE r.event_id = n.event_id',
    replace: 'DELETE FROM budget_reservations r USING new_rows n WHERE false AND r.event_id = n.event_id',
    tests: [MODEL],
  },
  {
    name: 's8bt: settlement keeps the released amount on reserved_usd',
    file: 'sql/011_budget_settle_replays.sql',
    search: 'reserved_usd = greatest(c.reserved_usd + excluded.reserved_usd, 0)',
    replace: 'reserved_usd = c.reserved_usd',
    tests: [MODEL],
  },
  {
    name: "s8bt: settlement books spend into the database clock's period, not the record's",
    file: 'sql/011_budget_settle_replays.sql',
    search: "SELECT n.organization_id, 'organization', '', p.period, budget_period_start(p.period, n.created_at), n.billed_cost_usd, 0",
    replace: "SELECT n.organization_id, 'organization', '', p.period, budget_period_start(p.period, now()), n.billed_cost_usd, 0",
    tests: [MODEL],
  },
  {
    name: "s8bt: settlement forgets users' spend",
    file: 'sql/011_budget_settle_replays.sql',
    search: 'WHERE n.billed_cost_usd <> 0 AND n.user_id IS NOT NULL',
    replace: 'WHERE false',
    tests: [MODEL, SETTLE],
  },
  // TypeScript around it
  {
    name: 's8bt: batch results matched by position',
    file: 'src/budgets/reserver.ts',
    search: 'batch.forEach((p, i) => p.resolve(byIndex.get(i)))',
    replace: 'batch.forEach((p, i) => p.resolve(rows[i]))',
    tests: [LOCKS],
  },
  {
    name: 's8bt: mulDivUp rounds down',
    file: 'src/budgets/money.ts',
    search: 'return p % c === 0n ? p / c : p / c + 1n',
    replace: 'return p / c',
    tests: [MONEY],
  },
  {
    name: 's8bt: amounts under a cent rounded to cents ($0.0025 reads $0.00)',
    file: 'src/budgets/money.ts',
    search: 'const places = underCent ? first + 2 : 2',
    replace: 'const places = 2',
    tests: [MONEY, REFUSAL],
  },
  {
    name: "s8bt: the page's money rule drifts from the server's",
    file: 'web/admin/money.js',
    search: 'const places = underCent ? first + 2 : 2',
    replace: 'const places = underCent ? first + 1 : 2',
    tests: [MONEY],
  },
  {
    name: 's8bt: "used up" judged on spend alone',
    file: 'src/budgets/refusal.ts',
    search: 'return toUnits(f.spentUsd) + toUnits(f.reservedUsd) >= toUnits(f.limitUsd)',
    replace: 'return toUnits(f.spentUsd) >= toUnits(f.limitUsd)',
    tests: [REFUSAL, ADMISSION],
  },
  {
    name: "s8bt: the refusal is not told the other requests' holds",
    file: 'src/budgets/limits.ts',
    search: 'reservedUsd: trimDecimal(row.reserved_usd!),',
    replace: "reservedUsd: '0',",
    tests: [ADMISSION],
  },
  {
    name: "s8bt: the refusal is not told this request's estimate",
    file: 'src/budgets/limits.ts',
    search: 'estimateUsd: amount,',
    replace: "estimateUsd: '0',",
    tests: [ADMISSION],
  },
  {
    name: 's8bt: a client gone during admission keeps its hold',
    file: 'src/budgets/limits.ts',
    search: "const gone = await this.d.sql`update budget_reservations set expires_at = '-infinity' where event_id = ${eventId} returning 1`",
    replace: "const gone = await this.d.sql`select 1 where false and ${eventId}::text is not null`",
    tests: [ADMISSION],
  },
  // The ledger
  {
    name: 's8bt: ledger drops a batch whose insert failed',
    file: 'src/usage/ledger.ts',
    search: '      this.queue.unshift(...batch) // back to the front, to be tried again\n',
    replace: '',
    tests: ['test/ledger.test.ts'],
  },
  {
    name: 's8bt: ledger insert without ON CONFLICT DO NOTHING (a replay fails the batch)',
    file: 'src/usage/ledger.ts',
    search: '        on conflict do nothing)\n      insert into user_mappings',
    replace: '        )\n      insert into user_mappings',
    tests: ['test/ledger.test.ts'],
  },
]
