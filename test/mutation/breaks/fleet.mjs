// A pooler in front of Postgres, deadlines on every query, /metrics that never
// waits, the ledger's backlog and its once-a-minute error.
export const BREAKS = [
  {
    name: 's8fleet: named prepared statements again (prepare: true) through a transaction pooler',
    file: 'src/db/connect.ts',
    search: '    prepare: false,',
    replace: '    prepare: true,',
    tests: ['test/pooler.test.ts'],
  },
  {
    name: 's8fleet: a query made through the bounded pool gets no deadline',
    file: 'src/db/bounded.ts',
    search: '      if (isQuery(q)) arm(q, ms, setting)\n      return q\n    },\n    get',
    replace: '      return q\n    },\n    get',
    tests: ['test/db-deadlines.test.ts'],
  },
  {
    name: 's8fleet: the sidecar pool is not wrapped with DATABASE_QUERY_TIMEOUT_MS',
    file: 'src/boot.ts',
    search: 'const sql = s.sql = bounded(pool, config.db.queryTimeoutMs)',
    replace: 'const sql = s.sql = pool',
    tests: ['test/db-deadlines.test.ts'],
  },
  {
    name: "s8fleet: the /metrics background reads lose their own deadline",
    file: 'src/ops/db-readings.ts',
    search: "const sql = bounded(s.sql, deadline, 'the /metrics readings deadline')",
    replace: 'const sql = s.sql',
    tests: ['test/db-deadlines.test.ts'],
  },
  {
    name: 's8fleet: /metrics awaits a fresh read of Postgres before answering',
    file: 'src/ops/metrics.ts',
    search: "    collect () { this.set(opts.db?.latest().postgresUp === true ? 1 : 0) },",
    replace: "    async collect () { await opts.db?.refresh(); this.set(opts.db?.latest().postgresUp === true ? 1 : 0) },",
    tests: ['test/db-deadlines.test.ts'],
  },
  {
    name: 's8fleet: the backlog age counts from the first record ever accepted',
    file: 'src/usage/ledger/ledger.ts',
    search: '{ this.journal?.committed(r.eventId); this.waitingSince.delete(r.eventId) }',
    replace: '{ this.journal?.committed(r.eventId) }',
    tests: ['test/db-deadlines.test.ts'],
  },
  {
    name: 's8fleet: the backlog age is never shown',
    file: 'src/usage/ledger/ledger.ts',
    search: 'oldestSeconds: records === 0 ? 0 : (now - oldest) / 1000',
    replace: 'oldestSeconds: 0',
    tests: ['test/db-deadlines.test.ts'],
  },
  {
    name: 's8fleet: the stall error is logged at every check, not once a minute',
    file: 'src/usage/ledger/ledger.ts',
    search: ' || now - this.lastStallLogAt < this.stalledAfterMs) return',
    replace: ') return',
    tests: ['test/db-deadlines.test.ts'],
  },
  {
    name: 's8fleet: the stall error comes before a minute has passed',
    file: 'src/usage/ledger/ledger.ts',
    search: 'if (b.stalledSeconds * 1000 < this.stalledAfterMs ||',
    replace: 'if (b.stalledSeconds * 1000 < 0 ||',
    tests: ['test/db-deadlines.test.ts'],
  },
  {
    name: 's8fleet: a deadline rejects the caller but leaves the query running on the server',
    file: 'src/db/bounded.ts',
    search: '  if (canceller) canceller(q).catch(() => {})',
    replace: '  void canceller',
    tests: ['test/db-deadlines.test.ts'],
  },
]
