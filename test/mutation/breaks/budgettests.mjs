// Breaks of the budget guarantees, the refusal's wording and money rule, and the ledger:
// `npm run mutate -- s8bt:`. The SQL entries target the definitions in effect, the ones
// src/db/migrate.ts re-applies at every boot: sql/functions/2-budgets.sql (admission, release,
// sweep, recount, period start) and sql/functions/3-usage-after-insert.sql (settlement). A break
// in a numbered migration that these override (006, 011, 013) would change nothing that runs.
// Some repeat an s8sql: break on purpose: here they judge the budgettests files, there budgets-sql.
const LOCKS = 'test/budget-locks.test.ts'
const MODEL = 'test/budget-model.test.ts'
const SETTLE = 'test/budget-settlement.test.ts'
const ADMISSION = 'test/budgets-admission.test.ts'
const REFUSAL = 'test/budget-refusal.test.ts'
const MONEY = 'test/money-format.test.ts'

export const BREAKS = [
  // The admission: budget_reserve() and budget_reserve_many()
  {
    name: 's8bt: no FOR UPDATE on the organization counter',
    file: 'sql/functions/2-budgets.sql',
    search: "    SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n       AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;\n    IF NOT FOUND THEN",
    replace: "    IF cscopes[k] = 'organization' THEN\n      SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n         AND x.period = periods[k] AND x.period_start = starts[k];\n    ELSE\n      SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n         AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;\n    END IF;\n    IF NOT FOUND THEN",
    tests: [LOCKS],
  },
  {
    name: 's8bt: no FOR UPDATE on the user counter',
    file: 'sql/functions/2-budgets.sql',
    search: "    SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n       AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;\n    IF NOT FOUND THEN",
    replace: "    IF cscopes[k] = 'user' THEN\n      SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n         AND x.period = periods[k] AND x.period_start = starts[k];\n    ELSE\n      SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n         AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;\n    END IF;\n    IF NOT FOUND THEN",
    tests: [LOCKS],
  },
  {
    name: 's8bt: organization check > becomes >= (landing exactly on the limit refused)',
    file: 'sql/functions/2-budgets.sql',
    search: "spent[k] + held[k] + p_amount > limits[k]",
    replace: "(spent[k] + held[k] + p_amount > limits[k] OR (cscopes[k] = 'organization' AND spent[k] + held[k] + p_amount = limits[k]))",
    tests: [SETTLE],
  },
  {
    name: 's8bt: user check > becomes >=',
    file: 'sql/functions/2-budgets.sql',
    search: "spent[k] + held[k] + p_amount > limits[k]",
    replace: "(spent[k] + held[k] + p_amount > limits[k] OR (cscopes[k] = 'user' AND spent[k] + held[k] + p_amount = limits[k]))",
    tests: [SETTLE],
  },
  {
    name: 's8bt: user check ignores the holds of requests in flight',
    file: 'sql/functions/2-budgets.sql',
    search: "spent[k] + held[k] + p_amount > limits[k]",
    replace: "(CASE WHEN cscopes[k] = 'user' THEN spent[k] + p_amount > limits[k] ELSE spent[k] + held[k] + p_amount > limits[k] END)",
    tests: [LOCKS, MODEL],
  },
  {
    name: 's8bt: a refused request keeps its reservation row',
    file: 'sql/functions/2-budgets.sql',
    search: "  IF refuse IS NOT NULL THEN\n    DELETE FROM budget_reservations x WHERE x.event_id = p_event;\n",
    replace: "  IF refuse IS NOT NULL THEN\n",
    tests: [MODEL],
  },
  {
    name: "s8bt: the default-user budget wins over the user's own",
    file: 'sql/functions/2-budgets.sql',
    search: "ORDER BY b.scope DESC LIMIT 1)  -- 'user' before 'default-user'",
    replace: 'ORDER BY b.scope ASC LIMIT 1)',
    tests: [MODEL],
  },
  {
    name: 's8bt: batch rows answer under the wrong index',
    file: 'sql/functions/2-budgets.sql',
    search: 'RETURN QUERY SELECT item.i, r.* FROM budget_reserve(',
    replace: 'RETURN QUERY SELECT (SELECT count(*)::int FROM budget_reservations) - 1, r.* FROM budget_reserve(',
    tests: [LOCKS],
  },
  // Periods
  {
    name: "s8bt: period start in the session's time zone",
    file: 'sql/functions/2-budgets.sql',
    search: "ELSE date_trunc(p_period, p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    replace: 'ELSE date_trunc(p_period, p_at)',
    tests: [MODEL],
  },
  // The recount: budget_recount(), the trigger on budgets
  // The recount's lock is the organization's advisory key (taken shared by settlement), not a
  // table lock on budget_counters: a recount holds back only its own organization's settlements.
  {
    name: 's8bt: no recount lock: a row settling meanwhile is lost',
    file: 'sql/functions/2-budgets.sql',
    search: '  PERFORM pg_advisory_xact_lock(727361002, budget_org_lock_key(o))',
    replace: '  PERFORM 1',
    tests: [LOCKS],
  },
  // Both ends move, so the wrong counter gets that period's exact spend: only a counter settlement
  // never wrote (a budget whose period changed, as the model does) tells it apart.
  {
    name: "s8bt: recount writes a different period's counter",
    file: 'sql/functions/2-budgets.sql',
    search: 'budget_period_start(period, now()) AS s,\n           budget_period_end(period, budget_period_start(period, now())) AS e',
    replace: "budget_period_start(period, now() - interval '40 days') AS s,\n           budget_period_end(period, budget_period_start(period, now() - interval '40 days')) AS e",
    tests: [MODEL],
  },
  // The sweeper: budget_sweep(), which gives holds back through budget_release()
  {
    name: 's8bt: the sweeper releases holds that have not expired',
    file: 'sql/functions/2-budgets.sql',
    search: 'WHERE expires_at < now() AND NOT (event_id = ANY (p_live))',
    replace: 'WHERE NOT (event_id = ANY (p_live))',
    tests: [MODEL],
  },
  // The sweep's own delete, bypassing budget_release(): a break inside budget_release() would
  // also break every other release, not the sweeper's.
  {
    name: 's8bt: the sweeper deletes reservations without giving back their holds',
    file: 'sql/functions/2-budgets.sql',
    search: '  n := budget_release(expired);',
    replace: '  DELETE FROM budget_reservations WHERE event_id = ANY (expired);\n  GET DIAGNOSTICS n = ROW_COUNT;',
    tests: [MODEL],
  },
  // Settlement: step 2 of usage_after_insert(), the one trigger on usage_events
  {
    name: 's8bt: settlement counts a replay taken back by the generation claim',
    file: 'sql/functions/3-usage-after-insert.sql',
    search: '\n       WHERE NOT (n.event_id = ANY (losers))',
    replace: '',
    tests: [SETTLE, MODEL],
  },
  {
    name: 's8bt: settlement does not release the reservation',
    file: 'sql/functions/3-usage-after-insert.sql',
    search: 'DELETE FROM budget_reservations r USING inserted_rows n WHERE r.event_id = n.event_id',
    replace: 'DELETE FROM budget_reservations r USING inserted_rows n WHERE false AND r.event_id = n.event_id',
    tests: [MODEL],
  },
  {
    name: 's8bt: settlement keeps the released amount on reserved_usd',
    file: 'sql/functions/3-usage-after-insert.sql',
    search: 'reserved_usd = greatest(c.reserved_usd + excluded.reserved_usd, 0)',
    replace: 'reserved_usd = c.reserved_usd',
    tests: [MODEL],
  },
  {
    name: "s8bt: settlement books spend into the database clock's period, not the record's",
    file: 'sql/functions/3-usage-after-insert.sql',
    search: "SELECT k.organization_id, 'organization', '', p.period, budget_period_start(p.period, k.created_at), k.amount, 0, k.overrun",
    replace: "SELECT k.organization_id, 'organization', '', p.period, budget_period_start(p.period, now()), k.amount, 0, k.overrun",
    tests: [MODEL],
  },
  {
    name: "s8bt: settlement forgets users' spend",
    file: 'sql/functions/3-usage-after-insert.sql',
    search: '       WHERE k.user_id IS NOT NULL',
    replace: '       WHERE false',
    tests: [MODEL, SETTLE],
  },
  // TypeScript around it
  {
    name: 's8bt: batch results matched by position',
    file: 'src/budgets/reserver.ts',
    search: 'batch.forEach((p, i) => { if (!p.abandoned) p.resolve(byIndex.get(i)) })',
    replace: 'batch.forEach((p, i) => { if (!p.abandoned) p.resolve(rows[i]) })',
    tests: [LOCKS],
  },
  {
    name: 's8bt: mulDivUp rounds down',
    file: 'src/lib/decimal.ts',
    search: 'return p % c === 0n ? p / c : p / c + 1n',
    replace: 'return p / c',
    tests: [MONEY],
  },
  {
    name: 's8bt: amounts under a cent rounded to cents ($0.0025 reads $0.00)',
    file: 'src/lib/decimal.ts',
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
    search: '      a.done()\n      void this.release(rec.eventId)\n      return null',
    replace: '      a.done()\n      return null',
    tests: [ADMISSION],
  },
  // The ledger
  {
    name: 's8bt: ledger drops a batch whose insert failed',
    file: 'src/usage/ledger/ledger.ts',
    search: '      this.queue.unshift(...batch) // back to the front, to be tried again\n',
    replace: '',
    tests: ['test/ledger.test.ts'],
  },
  {
    name: 's8bt: ledger insert without ON CONFLICT DO NOTHING (a replay fails the batch)',
    file: 'src/usage/ledger/ledger.ts',
    search: '        on conflict do nothing)\n      insert into user_mappings',
    replace: '        )\n      insert into user_mappings',
    tests: ['test/ledger.test.ts'],
  },
]
