// Breaks of session 14's work.
export const BREAKS = [
  {
    name: 'pool: postgres.js pipelines a query with parameters behind one in flight (a transaction-mode pooler wedges it)',
    file: 'src/db/connect.ts',
    search: '    max_pipeline: MENDED ? 0 : 100, // read by postgres.js (src/index.js), missing from its types\n',
    replace: '    max_pipeline: 100,\n',
    tests: ['test/pooler.test.ts'],
  },
]
