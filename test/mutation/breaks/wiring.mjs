// The data plane exists only once boot is done: the router answers 503 until then, and the
// metered path's admission is a synchronous check in front of an always-asynchronous admit().

const BOOT = 'test/boot.test.ts'

export const BREAKS = [
  {
    name: 'wiring: /readyz answers 200 before the data plane exists',
    file: 'src/proxy/server.ts',
    search: "if (url === '/readyz') return ctx.plane() ?",
    replace: "if (url === '/readyz') return true ?",
    tests: [BOOT],
  },
  {
    name: 'wiring: the admin plane answers 404 before boot is done, as if ADMIN_API_KEY were unset',
    file: 'src/proxy/server.ts',
    search: '&& ctx.adminEnabled) {',
    replace: '&& ctx.plane() !== null) {',
    tests: [BOOT],
  },
  {
    name: 'wiring: a budget never needs an admission (only a rate limit does)',
    file: 'src/budgets/limits.ts',
    search: "return this.hasRateLimit(rec.userId) || (keyRpm !== null && Boolean(rec.apiKeyId)) || this.anyBudgets !== false",
    replace: "return this.hasRateLimit(rec.userId) || (keyRpm !== null && Boolean(rec.apiKeyId))",
    tests: ['test/budgets.test.ts'],
  },
  {
    name: 'wiring: no budget, no rate limit, and the admission is still asked for',
    file: 'src/budgets/limits.ts',
    search: "return this.hasRateLimit(rec.userId) || (keyRpm !== null && Boolean(rec.apiKeyId)) || this.anyBudgets !== false",
    replace: 'return true',
    tests: ['test/budgets-admission.test.ts'],
  },
  {
    name: 'wiring: a refused request is dispatched anyway',
    file: 'src/proxy/metered.ts',
    search: '    return REFUSED\n  } catch (err) {',
    replace: '    return null as unknown as Admission\n  } catch (err) {',
    tests: ['test/budgets.test.ts'],
  },
  {
    name: 'wiring: a large JSON body is dispatched before its scan is finished',
    file: 'src/proxy/metered.ts',
    search: '    if (scan.step(SCAN_SLICE_BYTES)) break\n',
    replace: '    scan.step(SCAN_SLICE_BYTES); break\n',
    tests: ['test/body.test.ts'],
  },
]
