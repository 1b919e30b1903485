// The deliberate breaks `npm run mutate` applies, one at a time. Each: a name, a file, an exact
// search text (replaced once), and the test files that must fail with it in place. A search text
// that no longer exists is reported STALE: update the entry with the code it guards.
export const BREAKS = [
  // The four an outside mutation run found surviving.
  {
    name: 'pending journal lines no longer keep their segment alive',
    file: 'src/usage/journal.ts',
    search: '    this.size += line.length\n    this.hold(r.eventId, seg)',
    replace: "    this.size += line.length\n    if (kind === 'r') this.hold(r.eventId, seg)",
    tests: ['test/journal.test.ts'],
  },
  {
    name: "the client's accept-encoding is forwarded upstream",
    file: 'src/proxy/metered.ts',
    search: "upstreamHeaders(req.headers, ctx, 'identity')",
    replace: "upstreamHeaders(req.headers, ctx, 'client')",
    tests: ['test/usage-truth.test.ts'],
  },
  {
    name: 'no give-up on 401/403 from /generation',
    file: 'src/usage/reconcile.ts',
    search: 'if (status === 401 || status === 403) {',
    replace: 'if (status === -401) {',
    tests: ['test/reconcile.test.ts'],
  },
  {
    name: 'no fallback abort of a stream whose client left before the generation was named',
    file: 'src/proxy/metered.ts',
    search: 'else setTimeout(() => { if (!this.done) this.abort() }, ABORT_WAIT_FOR_HEADERS_MS).unref()',
    replace: 'else void ABORT_WAIT_FOR_HEADERS_MS',
    tests: ['test/usage-truth.test.ts'],
  },
  // Issue 8, items 3, 9, 10, 13, 14 (h2-ledger).
  {
    name: 'identity not normalized before the external id (item 3)',
    file: 'src/identity/directory.ts',
    search: 'const userId = who.userId === null ? null : pgText(who.userId)',
    replace: 'const userId = who.userId',
    tests: ['test/ledger.test.ts'],
  },
  {
    name: 'mappings of one user not merged within a batch (item 3)',
    file: 'src/usage/ledger.ts',
    search: '    const row = byUser.get(userId)\n',
    replace: '    const row = undefined\n',
    tests: ['test/ledger.test.ts'],
  },
  {
    name: 'a refused batch is retried whole instead of isolated (item 3)',
    file: 'src/usage/ledger.ts',
    search: 'if (isDataError(err)) {',
    replace: 'if (false) {',
    tests: ['test/ledger.test.ts'],
  },
  {
    name: 'insane upstream numbers stored as they are (item 9)',
    file: 'src/usage/record.ts',
    search: 'const checked = checkUsage(usage)',
    replace: 'const checked = { usage, anomaly: null }',
    tests: ['test/reconcile.test.ts', 'test/usage-truth.test.ts'],
  },
  {
    name: 'an oversized SSE line is buffered whole (item 9)',
    file: 'src/usage/sse-scanner.ts',
    search: 'if (this.lineBytes + rest.length > this.maxEventBytes) { this.tooLong(rest); return }',
    replace: '',
    tests: ['test/sse-scanner.test.ts'],
  },
  {
    name: 'the SSE scanner searches for CR again on every line (item 9)',
    file: 'src/usage/sse-scanner.ts',
    search: 'if (cr !== -1 && cr < start) {',
    replace: 'if (cr !== -1) {',
    tests: ['test/sse-scanner.test.ts'],
  },
  {
    name: 'mappings not written with the usage batch (item 10)',
    file: 'src/usage/ledger.ts',
    search: '${this.sql.json(mappingRows(rows) as never)}',
    replace: '${this.sql.json([] as never)}',
    tests: ['test/ledger.test.ts'],
  },
  {
    name: 'reconcile only when no usage at all (item 13)',
    file: 'src/proxy/metered.ts',
    search: "if (rec.costUsd === null && rec.generationId && outcome !== 'upstream_error') {",
    replace: "if (rec.usageSource === 'none' && rec.generationId && outcome !== 'upstream_error') {",
    tests: ['test/usage-truth.test.ts'],
  },
  {
    name: 'cost falls back to String(double) (item 14)',
    file: 'src/usage/extract.ts',
    search: '(source === undefined ? decimal(v) : rawNumber(source, key, v)) ?? null',
    replace: "(source === undefined ? decimal(v) : rawNumber(source, key, v)) ?? (typeof v === 'number' ? String(v) : null)",
    tests: ['test/usage-extract.test.ts'],
  },
  // Crash-safety paths.
  {
    name: 'a cut-short journal write is not taken back',
    file: 'src/usage/journal.ts',
    search: 'if (written > 0) ftruncateSync(this.fd, this.size)',
    replace: 'if (written < 0) ftruncateSync(this.fd, this.size)',
    tests: ['test/journal.test.ts'],
  },
  {
    name: 'reconcile never gives up on a generation that stays 404',
    file: 'src/usage/reconcile.ts',
    search: 'if (Date.now() + delay - started > this.opts.maxWaitMs) {',
    replace: 'if (false) {',
    tests: ['test/reconcile.test.ts'],
  },
  {
    name: 'a journal that cannot write spills records out of memory anyway',
    file: 'src/usage/ledger.ts',
    search: 'const onDisk = journaled || (this.journal?.append(r) ?? false)',
    replace: 'const onDisk = (this.journal?.append(r), true)',
    tests: ['test/journal.test.ts'],
  },
]
