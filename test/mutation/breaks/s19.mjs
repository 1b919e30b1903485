// Breaks of session 19's work: event ids of version 7 (the millisecond first), so usage_events'
// primary key takes them at its right-hand edge.
const UUID7 = 'test/uuid7.test.ts'
export const BREAKS = [
  {
    name: 's19: records get version 4 ids again (random leaf pages of the primary key)',
    file: 'src/usage/ledger/record.ts',
    search: '    eventId: uuid7(),',
    replace: '    eventId: globalThis.crypto.randomUUID(),',
    tests: [UUID7],
  },
  {
    name: 's19: the time is written in seconds, not milliseconds',
    file: 'src/lib/uuid7.ts',
    search: '((Math.floor(now) % MS_48) + MS_48) % MS_48',
    replace: '((Math.floor(now / 1000) % MS_48) + MS_48) % MS_48',
    tests: [UUID7],
  },
  {
    name: 's19: the version nibble says 4',
    file: 'src/lib/uuid7.ts',
    search: '-7${r.slice(15, 18)}',
    replace: '-4${r.slice(15, 18)}',
    tests: [UUID7],
  },
  {
    name: 's19: the random part shrinks to the version group',
    file: 'src/lib/uuid7.ts',
    search: '-${r.slice(19)}`',
    replace: '-8000-000000000000`',
    tests: [UUID7],
  },
  {
    name: 's19: the time is not padded to 48 bits (early times sort wrong, ids malformed)',
    file: 'src/lib/uuid7.ts',
    search: ".padStart(12, '0')",
    replace: '',
    tests: [UUID7],
  },
]
