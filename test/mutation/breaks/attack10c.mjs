// Breaks of what an attack on the export found or checked: a replayed set-aside row becomes an
// acknowledgement past the cursor, forget carries the user's Stripe customer to the pseudonym, a
// credential echoed by a receiver is cut out of the reason, and the guarantees the export's own
// tests pin (401/403 retried, Retry-After honoured and capped, customer precedence). Each must
// make the named tests fail.
const EXPORT = ['test/export-stripe.test.ts', 'test/export-cloudevents.test.ts', 'test/export-faults.test.ts', 'test/export-db.test.ts']
export const BREAKS = [
  {
    name: 'attack10c: a replayed set-aside row past the cursor is not acknowledged',
    file: 'src/export/replay.ts',
    search: 'if (gone.length === 0) return 0',
    replace: 'return gone.length',
    tests: ['test/attack-s10c-replay-ack.test.ts'],
  },
  {
    name: "attack10c: forget leaves the user's Stripe customer behind",
    file: 'sql/functions/8-forget.sql',
    search: "WITH gone AS (DELETE FROM billing_customers WHERE organization_id = p_org AND scope = 'user' AND subject = p_user RETURNING *)",
    replace: "WITH gone AS (SELECT * FROM billing_customers WHERE false)",
    tests: ['test/attack-s10c-forget-customer.test.ts'],
  },
  {
    name: 'attack10c: an echoed credential is kept in the reason',
    file: 'src/export/http.ts',
    search: "const text = redact(await res.text().catch(() => ''), headers).slice(0, 2000)",
    replace: "const text = (await res.text().catch(() => '')).slice(0, 2000)",
    tests: ['test/attack-s10c-secret-echo.test.ts'],
  },
  {
    name: 'attack10c: db export keeps the source cluster\'s export positions',
    file: 'src/db/copy-ledger.ts',
    search: '      await rebaseExport(t)\n',
    replace: '',
    tests: ['test/attack-s10c-copy-ledger.test.ts'],
  },
  {
    name: 'attack10c: 401 and 403 refuse rows for good (a wrong key sets the ledger aside)',
    file: 'src/export/http.ts',
    search: 'const TEMPORARY = new Set([401, 403, 404, 408, 409, 425, 429])',
    replace: 'const TEMPORARY = new Set([404, 408, 409, 425, 429])',
    // The export's own files never meet a 401; the echo attack's does, and sets aside only its 400.
    tests: [...EXPORT, 'test/attack-s10c-secret-echo.test.ts'],
  },
  {
    name: 'attack10c: a Retry-After of days is not capped',
    file: 'src/export/backoff.ts',
    search: 'return Math.min(ms, 3_600_000)',
    replace: 'return ms',
    tests: ['test/attack-s10c-retry-after.test.ts'],
  },
  {
    name: "attack10c: the key's customer wins over the user's own",
    file: 'src/export/billing-customers.ts',
    search: 'const own = map.users.get(row.userId)',
    replace: "const own = row.apiKeyId !== null && map.keys.has(row.apiKeyId) ? map.keys.get(row.apiKeyId) : map.users.get(row.userId)",
    tests: EXPORT,
  },
  {
    name: 'attack10c: a refused CloudEvents batch is set aside whole',
    file: 'src/export/cloudevents-sink.ts',
    search: "if (rows.length === 1) return [{ status: 'rejected', reason: answer.reason }]",
    replace: "return rows.map(() => ({ status: 'rejected', reason: answer.reason }))",
    tests: EXPORT,
  },
]
