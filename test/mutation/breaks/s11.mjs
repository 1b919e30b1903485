// Breaks of session 11's fixes: a reservation batch rolled back as a deadlock victim runs again.
export const BREAKS = [
  {
    name: 'budgets: a batch chosen as a deadlock victim fails its admissions instead of running again',
    file: 'src/budgets/reserver.ts',
    search: 'const RETRIES = 3',
    replace: 'const RETRIES = 1',
    tests: ['test/budgets-holds.test.ts'],
  },
]
