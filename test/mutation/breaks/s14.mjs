// Breaks of session 14's work.
export const BREAKS = [
  {
    name: 'pool: postgres.js pipelines a query with parameters behind one in flight (a transaction-mode pooler wedges it)',
    file: 'src/db/connect.ts',
    search: '    max_pipeline: MENDED ? 0 : 100, // read by postgres.js (src/index.js), missing from its types\n',
    replace: '    max_pipeline: 100,\n',
    tests: ['test/pooler.test.ts'],
  },
  {
    name: 'claim: an id twice in one statement, on the plain-insert path, keeps both rows',
    file: 'sql/functions/3-usage-after-insert.sql',
    search: '    IF n_claimed < with_id THEN',
    replace: '    IF false THEN',
    tests: ['test/partitions.test.ts'],
  },
  {
    name: 'claim: an id claimed before makes the statement fail instead of taking the ON CONFLICT path',
    file: 'sql/functions/3-usage-after-insert.sql',
    search: '  EXCEPTION WHEN unique_violation THEN',
    replace: '  EXCEPTION WHEN division_by_zero THEN',
    tests: ['test/ledger.test.ts', 'test/partitions.test.ts'],
  },
  {
    name: 'org check: an organization the lock skipped but the lookup finds is refused, naming NULL',
    file: 'sql/functions/3-usage-after-insert.sql',
    search: '    IF missing IS NOT NULL THEN',
    replace: '    IF true THEN',
    tests: ['test/attack-s14b-org-recreated.test.ts'],
  },
]
