// Breaks of session 18's work: a stream's first bytes wait for the journal's one write per turn
// (the pending line naming their generation) instead of a write(2) of their own.
const BODY = 'test/body.test.ts'
export const BREAKS = [
  {
    name: 's18: bytes that name the generation leave before the pending line is written',
    file: 'src/proxy/metered.ts',
    search: '    if (this.held !== null) { this.held.push(chunk); return true }\n',
    replace: '\n',
    tests: [BODY],
  },
  {
    name: 's18: the pending line is not appended when the first bytes arrive',
    file: 'src/proxy/metered.ts',
    search: '    this.unjournaled?.()\n    if (this.held !== null)',
    replace: '    if (this.held !== null)',
    tests: [BODY],
  },
  {
    name: 's18: held chunks are dropped instead of written',
    file: 'src/proxy/metered.ts',
    search: '    for (const c of held) this.res.write(c)\n',
    replace: '\n',
    tests: [BODY],
  },
  {
    name: 's18: a chunk that arrives while one is held replaces it',
    file: 'src/proxy/metered.ts',
    search: '{ this.held.push(chunk); return true }',
    replace: '{ this.held = [chunk]; return true }',
    tests: [BODY, 'test/faults.test.ts'],
  },
  {
    name: 's18: the line is counted written before its write',
    file: 'src/proxy/metered.ts',
    search: '      this.ctx.ledger.afterJournal(() => this.release())\n',
    replace: '      this.release()\n',
    tests: [BODY],
  },
]
BREAKS.push({
  name: 's18: npm start runs node without the young generation flag the image has',
  file: 'package.json',
  search: '"start": "node --max-semi-space-size=8 dist/main.js",',
  replace: '"start": "node dist/main.js",',
  tests: ['test/deploy-files.test.ts'],
}, {
  name: 's18: the image runs node with Node\'s default young generation',
  file: 'Dockerfile',
  search: 'CMD ["node", "--max-semi-space-size=8", "dist/main.js"]',
  replace: 'CMD ["node", "dist/main.js"]',
  tests: ['test/deploy-files.test.ts'],
})
