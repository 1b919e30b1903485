// Breaks of `usage-proxy export-db` (src/db/copy-ledger.ts, src/db/export-command.ts): each must
// make test/export-db.test.ts fail.
const EXPORT = ['test/export-db.test.ts']
export const BREAKS = [
  {
    name: 'export-db: the target\'s insert triggers stay on during the copy (rollups and budgets counted twice)',
    file: 'src/db/copy-ledger.ts',
    search: "      for (const table of ordered) await t.unsafe(`alter table ${ident(table)} disable trigger user`)\n",
    replace: '',
    tests: EXPORT,
  },
  {
    name: 'export-db: the source\'s monthly partitions are not made on the target',
    file: 'src/db/copy-ledger.ts',
    search: '      for (const month of months) await t`select usage_ensure_partition(${month}::date)`\n',
    replace: '',
    tests: EXPORT,
  },
  {
    name: 'export-db: a target that already holds rows is copied into',
    file: 'src/db/copy-ledger.ts',
    search: '        if (any) throw new CopyRefused(',
    replace: '        if (any && false) throw new CopyRefused(',
    tests: EXPORT,
  },
  {
    name: 'export-db: a refusal exits 1 like a failure',
    file: 'src/db/export-command.ts',
    search: "if (e instanceof CopyRefused || e instanceof StartupError) { err(`usage-proxy: export-db: ${e.message}\\n`); return 2 }",
    replace: "if (e instanceof CopyRefused || e instanceof StartupError) { err(`usage-proxy: export-db: ${e.message}\\n`); return 1 }",
    tests: EXPORT,
  },
]
