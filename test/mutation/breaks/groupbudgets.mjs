// Breaks of group and key budgets and of model allowlists: `node test/mutation/run.mjs gb:`.
// The SQL entries target the definitions in effect (sql/functions/2-budgets.sql, admission and
// recount; sql/functions/3-usage-after-insert.sql, settlement).
const LOCKS = 'test/group-budget-locks.test.ts'
const GROUPS = 'test/group-budgets.test.ts'
const LISTS = 'test/allowlists.test.ts'

export const BREAKS = [
  // Locks
  {
    name: 'gb: no FOR UPDATE on a group counter',
    file: 'sql/functions/2-budgets.sql',
    search: "    SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n       AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;\n    IF NOT FOUND THEN",
    replace: "    IF cscopes[k] = 'group' THEN\n      SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n         AND x.period = periods[k] AND x.period_start = starts[k];\n    ELSE\n      SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n         AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;\n    END IF;\n    IF NOT FOUND THEN",
    tests: [LOCKS],
  },
  {
    name: 'gb: no FOR UPDATE on a key counter',
    file: 'sql/functions/2-budgets.sql',
    search: "    SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n       AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;\n    IF NOT FOUND THEN",
    replace: "    IF cscopes[k] = 'key' THEN\n      SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n         AND x.period = periods[k] AND x.period_start = starts[k];\n    ELSE\n      SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]\n         AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;\n    END IF;\n    IF NOT FOUND THEN",
    tests: [LOCKS],
  },
  {
    name: 'gb: an admission locks its counters in reverse key order',
    file: 'sql/functions/2-budgets.sql',
    search: '  ORDER BY a.counter_scope, a.subject\n',
    replace: '  ORDER BY a.counter_scope DESC, a.subject DESC\n',
    tests: [LOCKS],
  },
  {
    name: 'gb: a batch with group budgets locks its counters in reverse key order',
    file: 'sql/functions/2-budgets.sql',
    search: '     ORDER BY c.organization_id, c.scope, c.user_id, c.period, c.period_start\n       FOR UPDATE;\n  END IF;\n  FOR item IN',
    replace: '     ORDER BY c.organization_id DESC, c.scope DESC, c.user_id DESC, c.period, c.period_start\n       FOR UPDATE;\n  END IF;\n  FOR item IN',
    tests: [LOCKS],
  },
  {
    name: 'gb: a batch with group budgets does not lock its counters first',
    file: 'sql/functions/2-budgets.sql',
    search: "     OR EXISTS (SELECT 1 FROM jsonb_to_recordset(p_items) AS x(org text, groups text[], key text)",
    replace: "     OR false AND EXISTS (SELECT 1 FROM jsonb_to_recordset(p_items) AS x(org text, groups text[], key text)",
    tests: [LOCKS],
  },
  // Periods
  {
    name: 'gb: settlement books group spend in the day, whatever the budget\'s period',
    file: 'sql/functions/3-usage-after-insert.sql',
    search: "SELECT k.organization_id, 'group', g.g, b.period, budget_period_start(b.period, k.created_at)",
    replace: "SELECT k.organization_id, 'group', g.g, b.period, budget_period_start('day', k.created_at)",
    tests: [GROUPS],
  },
  {
    name: 'gb: the recount of a group reads from a month earlier',
    file: 'sql/functions/2-budgets.sql',
    search: "budget_subject_spend(b.organization_id, b.s, b.e, b.scope, b.user_id)",
    replace: "budget_subject_spend(b.organization_id, b.s - interval '1 month', b.e, b.scope, b.user_id)",
    tests: [GROUPS],
  },
  {
    name: 'gb: a group hold is taken in the wrong period (since 1970), not in its budget\'s',
    file: 'sql/functions/2-budgets.sql',
    search: "limits := limits || a.limit_usd; periods := periods || a.period; starts := starts || budget_period_start(a.period, p_at);",
    replace: "limits := limits || a.limit_usd; periods := periods || a.period; starts := starts || budget_period_start(CASE WHEN a.counter_scope = 'group' THEN 'total' ELSE a.period END, p_at);",
    tests: [GROUPS],
  },
  // Rounding and amounts
  {
    name: 'gb: the check rounds to cents',
    file: 'sql/functions/2-budgets.sql',
    search: "spent[k] + held[k] + p_amount > limits[k]",
    replace: "round(spent[k] + held[k] + p_amount, 2) > limits[k]",
    tests: [GROUPS],
  },
  {
    name: 'gb: group spend is booked rounded to 4 places',
    file: 'sql/functions/3-usage-after-insert.sql',
    search: "budget_period_start(b.period, k.created_at), k.amount, 0, k.overrun\n        FROM kept k CROSS JOIN LATERAL",
    replace: "budget_period_start(b.period, k.created_at), round(k.amount, 4), 0, k.overrun\n        FROM kept k CROSS JOIN LATERAL",
    tests: [GROUPS],
  },
  {
    name: 'gb: a group check ignores the holds of requests in flight',
    file: 'sql/functions/2-budgets.sql',
    search: "spent[k] + held[k] + p_amount > limits[k]",
    replace: "(CASE WHEN cscopes[k] = 'group' THEN spent[k] + p_amount > limits[k] ELSE spent[k] + held[k] + p_amount > limits[k] END)",
    tests: [LOCKS],
  },
  // Settlement and recount
  {
    name: 'gb: group and key holds are never released',
    file: 'sql/functions/2-budgets.sql',
    search: '  SELECT * FROM unnest(p_scopes, p_subjects, p_periods, p_starts)\n',
    replace: '  SELECT * FROM unnest(p_scopes, p_subjects, p_periods, p_starts) WHERE false\n',
    tests: [GROUPS],
  },
  {
    name: 'gb: the recount counts only rows in that one group',
    file: 'sql/functions/2-budgets.sql',
    search: "WHEN 'group' THEN e.groups @> ARRAY[p_subject]",
    replace: "WHEN 'group' THEN e.groups = ARRAY[p_subject]",
    tests: [GROUPS],
  },
  {
    name: 'gb: key spend is not settled',
    file: 'sql/functions/3-usage-after-insert.sql',
    search: "b.scope = 'key' AND b.user_id = k.api_key_id",
    replace: "b.scope = 'key' AND b.user_id = k.api_key_id AND false",
    tests: [GROUPS],
  },
  {
    name: 'gb: the user is named before the group that refused',
    file: 'sql/functions/2-budgets.sql',
    search: "WHEN 'group' THEN 1 WHEN 'key' THEN 2 ELSE 3 END",
    replace: "WHEN 'group' THEN 3 WHEN 'key' THEN 2 ELSE 1 END",
    tests: [GROUPS],
  },
  {
    name: 'gb: the admission does not send the groups',
    file: 'src/budgets/limits.ts',
    search: 'groups: rec.groups ?? [], key: rec.apiKeyId ?? null,',
    replace: 'groups: [], key: rec.apiKeyId ?? null,',
    tests: [GROUPS],
  },
  // Allowlists
  {
    name: 'gb: the models fallback list is not checked',
    file: 'src/proxy/metered.ts',
    search: '...(fallbacks ?? [])]',
    replace: '...([] as string[])]',
    tests: [LISTS],
  },
  {
    name: 'gb: a request naming no model passes a list',
    file: 'src/budgets/allowlists.ts',
    search: "  if (models.length === 0) return `Name a model",
    replace: "  if (models.length === 0) return null\n  if (models.length === 0) return `Name a model",
    tests: [LISTS],
  },
  {
    name: 'gb: one list allowing is enough',
    file: 'src/budgets/allowlists.ts',
    search: 'return rs.every((r) => allows(r.list, model))',
    replace: 'return rs.some((r) => allows(r.list, model))',
    tests: [LISTS],
  },
  {
    name: 'gb: an entry with a variant allows the base model',
    file: 'src/budgets/allowlists.ts',
    search: '  return colon > 0 && list.has(m.slice(0, colon))',
    replace: '  return (colon > 0 && list.has(m.slice(0, colon))) || [...list].some((e) => e.startsWith(m + \':\'))',
    tests: [LISTS],
  },
  {
    name: 'gb: the key list is ignored',
    file: 'src/budgets/allowlists.ts',
    search: "    if (keyModels !== null) out.push(",
    replace: "    if (keyModels === undefined) out.push(",
    tests: [LISTS],
  },
  {
    name: 'gb: /v1/models is not filtered',
    file: 'src/proxy/models-list.ts',
    search: '      if (rs.length > 0) keep = (id) => allowedBy(rs, id)',
    replace: '      if (rs.length > 0) keep = () => true',
    tests: [LISTS],
  },
  {
    name: 'gb: another replica never re-reads the lists',
    file: 'src/budgets/allowlists.ts',
    search: '    this.timer = setInterval(() => { this.periodic ??= this.refresh().finally(() => { this.periodic = null }) }, refreshMs)',
    replace: '    this.timer = setInterval(() => {}, refreshMs)',
    tests: [LISTS],
  },
]
