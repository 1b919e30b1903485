// Breaks of the one error writer and the one small-body reader (src/lib/errors.ts,
// src/lib/read-body.ts): `npm run mutate -- dedupe:`.
const WRITER = 'test/error-writer.test.ts'

export const BREAKS = [
  {
    name: 'dedupe: every error gains param, so bodies that never had it change',
    file: 'src/lib/errors.ts',
    search: 'param === undefined ? { message, type, code } : { message, type, code, param }',
    replace: '{ message, type, code, param: param ?? null }',
    tests: [WRITER],
  },
  {
    name: "dedupe: a refusal's param: null is dropped",
    file: 'src/lib/errors.ts',
    search: 'param === undefined ? { message, type, code } : { message, type, code, param }',
    replace: '{ message, type, code }',
    tests: [WRITER, 'test/budgets.test.ts'],
  },
  {
    name: 'dedupe: the headers a caller passes are dropped (retry-after)',
    file: 'src/lib/errors.ts',
    search: "'content-length': Buffer.byteLength(body), ...headers })",
    replace: "'content-length': Buffer.byteLength(body) })",
    tests: [WRITER],
  },
  {
    name: 'dedupe: a small body one byte past its limit is read anyway',
    file: 'src/lib/read-body.ts',
    search: '    if (size > limit) return null',
    replace: '    if (size > limit + 1) return null',
    tests: [WRITER],
  },
]
