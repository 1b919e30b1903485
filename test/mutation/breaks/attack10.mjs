// Breaks of the fixes an attack on group budgets and allowlists found: an admin change and its
// audit row committed together, one change to a target at a time, and the model fields of a
// multipart upload checked against the caller's allowlists. Each must make the named tests fail.
// (Reading `before` through the pool rather than the transaction is no break: it happens once the
// target's lock is held, so it reads the same committed value.)
const AUDIT = ['test/attack-s10-audit-race.test.ts']
const UPLOAD = ['test/attack-s10-upload-model.test.ts']
export const BREAKS = [
  {
    name: 'attack10: admin changes to one target no longer take turns',
    file: 'src/admin/audited.ts',
    search: "await tx`select pg_advisory_xact_lock(hashtextextended(${'usage-proxy admin change ' + org + ' ' + target}, 0))`",
    replace: '',
    tests: AUDIT,
  },
  {
    name: 'attack10: an upload\'s model fields are not read',
    file: 'src/proxy/metered.ts',
    search: 'const fallbacks = body.uploadModels ?? body.json?.strings',
    replace: 'const fallbacks = body.json?.strings',
    tests: UPLOAD,
  },
  {
    name: 'attack10: only an upload\'s last model field is checked',
    file: 'src/proxy/body/multipart.ts',
    search: 'return this.modelParts.map(',
    replace: 'return this.modelParts.slice(-1).map(',
    tests: UPLOAD,
  },
  {
    name: 'attack10: /v1/models/user passes through unfiltered',
    file: 'src/proxy/server.ts',
    search: "new Set(['models', 'models/user', 'embeddings/models'])",
    replace: "new Set(['models', 'embeddings/models'])",
    tests: UPLOAD,
  },
]
