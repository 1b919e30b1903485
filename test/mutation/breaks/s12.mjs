// Breaks of session 12's fixes: a budget written through this process binds at once.
// scripts/patch-postgres.mjs has no break here: the runner links node_modules, so an edit of the
// script would not reach the installed postgres.js; test/postgres-patch.test.ts was run against
// the unmended connection.js by hand instead (it fails: a connection stays wedged).
export const BREAKS = [
  {
    name: 'budgets: a budget written here waits for the re-read before admissions ask',
    file: 'src/budgets/limits.ts',
    search: '    this.changes++\n    this.anyBudgets = null\n',
    replace: '    this.changes++\n',
    tests: ['test/budgets-holds.test.ts', 'test/attack-s12-first-budget-flood.test.ts'],
  },
  {
    name: 'budgets: a re-read begun before a budget write here resets it to "no budget"',
    file: 'src/budgets/limits.ts',
    search: 'if (seen === this.changes) this.anyBudgets = r.any',
    replace: 'this.anyBudgets = r.any',
    tests: ['test/budgets-holds.test.ts'],
  },
  {
    name: 'budgets: an abandoned batch is cancelled with postgres.js\'s cancel(), which drops a refused cancel request',
    file: 'src/budgets/reserver.ts',
    search: 'cancel: () => { cancelled = true; cancelQuery(query) }',
    replace: 'cancel: () => { cancelled = true; query.cancel() }',
    tests: ['test/budgets-holds.test.ts'],
  },
  {
    name: 'deadlines: a transaction whose caller got the deadline error commits all the same',
    file: 'src/db/bounded.ts',
    search: '            if (late) throw new DeadlineError(txMs, setting)\n            return result',
    replace: '            return result',
    tests: ['test/db-deadlines.test.ts'],
  },
  {
    name: 'budgets: a periodic "any budget?" re-read starts while the last is still out',
    file: 'src/budgets/limits.ts',
    search: 'this.periodic ??= this.refresh().finally(() => { this.periodic = null })',
    replace: 'void this.refresh()',
    tests: ['test/budgets-holds.test.ts'],
  },
  {
    name: 'allowlists: a periodic re-read starts while the last is still out',
    file: 'src/budgets/allowlists.ts',
    search: 'this.periodic ??= this.refresh().finally(() => { this.periodic = null })',
    replace: 'void this.refresh()',
    tests: ['test/budgets-holds.test.ts'],
  },
]
