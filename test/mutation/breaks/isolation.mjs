// Breaks of admission isolation: the admissions' own pool, "My usage" under the
// rate limits and its cache, the report's one budget query, and counting every fail-open.
const ISO = 'test/admission-isolation.test.ts'
const OPEN = 'test/admission-fail-open.test.ts'
const MINE = 'test/my-usage-limits.test.ts'
const REPORT = 'test/usage-report-budgets.test.ts'

export const BREAKS = [
  {
    name: 's8iso: admissions query through the main pool',
    file: 'src/budgets/limits.ts',
    search: 'this.admissionSql = d.admissionSql ?? d.sql',
    replace: 'this.admissionSql = d.sql',
    tests: [ISO],
  },
  {
    name: 's8iso: boot gives admissions the main pool instead of their own',
    file: 'src/boot.ts',
    search: 'const admissionSql = s.admissionSql = s.embedded\n    ? sql',
    replace: 'const admissionSql = s.admissionSql = true\n    ? sql',
    tests: [ISO],
  },
  {
    name: 's8iso: "My usage" is not rate-limited',
    file: 'src/proxy/metered.ts',
    search: 'if (!ctx.limits.hasRateLimit(userId)) return answer()',
    replace: 'if (userId !== "\\u0000") return answer()',
    tests: [MINE],
  },
  {
    name: 's8iso: "My usage" never gives its concurrency slot back',
    file: 'src/proxy/metered.ts',
    search: "  res.once('close', a.done)\n",
    replace: '\n',
    tests: [MINE],
  },
  {
    name: 's8iso: the "My usage" cache never expires',
    file: 'src/usage/reports/my-usage-cache.ts',
    search: 'if (hit && t - hit.at < o.ttlMs) return hit.text',
    replace: 'if (hit) return hit.text',
    tests: [MINE],
  },
  {
    name: 's8iso: the "My usage" cache is keyed by the organization, not the user',
    file: 'src/usage/reports/my-usage-cache.ts',
    search: 'const key = JSON.stringify([who.userId, externalUserId])',
    replace: "const key = 'organization'",
    tests: [MINE],
  },
  {
    name: 's8iso: the "My usage" cache is keyed by the external id alone (no user and the organization share an answer)',
    file: 'src/usage/reports/my-usage-cache.ts',
    search: 'const key = JSON.stringify([who.userId, externalUserId])',
    replace: 'const key = JSON.stringify([externalUserId === "org" ? "ext-a" : externalUserId])',
    tests: [MINE],
  },
  {
    name: 's8iso: a failed "My usage" read is kept in the cache',
    file: 'src/usage/reports/my-usage-cache.ts',
    search: 'text.catch(() => { if (entries.get(key) === entry) entries.delete(key) })',
    replace: 'text.catch(() => {})',
    tests: [MINE],
  },
  {
    name: 's8iso: the "My usage" cache is unbounded',
    file: 'src/usage/reports/my-usage-cache.ts',
    search: 'if (entries.size >= o.max) {',
    replace: 'if (entries.size < 0) {',
    tests: [MINE],
  },
  {
    name: 's8iso: an admin API budget change leaves "My usage" answers cached',
    file: 'src/main.ts',
    search: 'void limits.refresh(); summaries.clear()',
    replace: 'void limits.refresh()',
    tests: [MINE],
  },
  {
    name: 's8iso: the usage report asks one budget query per user',
    file: 'src/admin/usage.ts',
    search: "const budgets = groupBy === 'user' ? await deps.budgetsFor(rows.flatMap((r) => r.key === null ? [] : [r.key])) : null",
    replace: "const budgets = groupBy === 'user' ? new Map((await Promise.all(rows.flatMap((r) => r.key === null ? [] : [r.key]).map(async (k) => [...(await deps.budgetsFor([k]))]))).flat()) : null",
    tests: [REPORT],
  },
  {
    name: "s8iso: the report's budgets are read from the primary, not DATABASE_READ_URL",
    file: 'src/main.ts',
    search: 'budgetsForUsers(readSql, ',
    replace: 'budgetsForUsers(() => sql, ',
    tests: [REPORT],
  },
  {
    name: "s8iso: the report's budget bar prefers the default budget over the user's own",
    file: 'src/budgets/status-for.ts',
    search: "order by scope = 'user' desc",
    replace: "order by scope = 'user' asc",
    tests: [REPORT],
  },
  {
    name: 's8iso: a fail-open admission is not counted',
    file: 'src/budgets/fail-open.ts',
    search: '    this.total++\n',
    replace: '\n',
    tests: [OPEN],
  },
  {
    name: 's8iso: fail-opens after the first of an episode are not logged',
    file: 'src/budgets/fail-open.ts',
    search: '    w.count++\n',
    replace: '\n',
    tests: [OPEN],
  },
  {
    name: 's8iso: a request whose rate and budget checks both fail open is counted twice',
    file: 'src/budgets/limits.ts',
    search: "if (unchecked ? this.d.config.failMode === 'open' : this.failOpen(err, 'budget', rec.userId, rec.eventId)) return done",
    replace: "if (this.failOpen(err, 'budget', rec.userId, rec.eventId)) return done",
    tests: [OPEN],
  },
  {
    name: 's8iso: /metrics does not show fail-opens',
    file: 'src/ops/budget-metrics.ts',
    search: 'this.inc(failOpen()?.total ?? 0)',
    replace: 'this.inc(0)',
    tests: [OPEN],
  },
  {
    name: 's8iso: the usage page never shows fail-opens',
    file: 'web/admin/app.js',
    search: 'box.hidden = a.failed_open === 0',
    replace: 'box.hidden = true',
    tests: [OPEN],
  },
]
