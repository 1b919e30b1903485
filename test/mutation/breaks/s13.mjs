// Breaks of session 13's work. The postgres.js edits themselves have none (the runner links
// node_modules, so an edit of scripts/patch-postgres.mjs never reaches the installed copy): each
// behavioural subtest of test/postgres-patch.test.ts was run against a copy without its edit and
// failed there. What boot checks of the mend does have one.
export const BREAKS = [
  {
    name: 'mend: boot accepts an install mended by an older script, without the later edits',
    file: 'src/db/postgres-mend.ts',
    search: 'export const EDITS = 8',
    replace: 'export const EDITS = 7',
    tests: ['test/postgres-patch.test.ts'],
  },
  {
    name: 'deadlines: a cursor batch that arrives after its deadline waits for a next() nobody calls',
    file: 'src/db/bounded.ts',
    search: '                if (settled) inner.return()\n',
    replace: '',
    tests: ['test/db-deadlines.test.ts'],
  },
]
