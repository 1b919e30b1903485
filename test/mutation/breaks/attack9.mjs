// Breaks of the fixes an attack found: the embedded database's guard against impossible message
// lengths and stalled turn holders, the URL redaction, and the rate slot given back when the
// admission's budget half throws. Each must make the named tests fail. (The startup message's
// own length check has no break: without it, the bytes it skipped are read as a message of
// length 0 and closed by the message check, so no test can tell the two apart.)
const PGLITE = ['test/pglite-server.test.ts']
export const BREAKS = [
  {
    name: 'attack9: a message length under 4 is handed to the session',
    file: 'src/db/pglite-server.ts',
    search: 'if (declared < 4 || declared > MAX_MESSAGE_BYTES) return \'garbage\'',
    replace: '',
    tests: PGLITE,
  },
  {
    name: 'attack9: a stalled turn holder keeps the session while others wait',
    file: 'src/db/pglite-server.ts',
    search: 'if (this.turns.queued > 0) { this.socket.destroy(); return }',
    replace: '',
    tests: PGLITE,
  },
  {
    name: 'attack9: a turn holder is cut off even when nobody waits',
    file: 'src/db/pglite-server.ts',
    search: 'if (this.turns.queued > 0) { this.socket.destroy(); return }',
    replace: 'this.socket.destroy(); return',
    tests: PGLITE,
  },
  {
    name: 'attack9: the password ends at the first @',
    file: 'src/db/connect.ts',
    search: 'const at = url.lastIndexOf(\'@\')',
    replace: 'const at = url.indexOf(\'@\')',
    tests: ['test/attack-s9-redact.test.ts'],
  },
  {
    name: 'attack9: a password parameter is logged',
    file: 'src/db/connect.ts',
    search: 'return shown.replace(/([?&](?:ssl)?password=)[^&#]*/gi, \'$1***\')',
    replace: 'return shown',
    tests: ['test/attack-s9-redact.test.ts'],
  },
  {
    name: 'attack9: a throwing budget half keeps the rate slot',
    file: 'src/budgets/limits.ts',
    search: '      rate.done()\n      throw err',
    replace: '      throw err',
    tests: ['test/attack-s9-admission-throws.test.ts'],
  },
  {
    name: 'attack9: every refusal of a flood becomes a row',
    file: 'src/budgets/refusal-rows.ts',
    search: '    if (n <= this.perMinute) return true',
    replace: '    return true',
    tests: ['test/access-refusals.test.ts', 'test/refusal-rows.test.ts'],
  },
  {
    name: 'attack9: the refusal rows never start a new minute',
    file: 'src/budgets/refusal-rows.ts',
    search: '    if (minute !== this.window) { this.window = minute; this.counts.clear() }',
    replace: '',
    tests: ['test/refusal-rows.test.ts'],
  },
]
