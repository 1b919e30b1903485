// Breaks of session 18's work: a stream's first bytes wait for the journal's one write per turn
// (the pending line naming their generation) instead of a write(2) of their own.
const BODY = 'test/body.test.ts'
export const BREAKS = [
  {
    name: 's18: bytes that name the generation leave before the pending line is written',
    file: 'src/proxy/metered.ts',
    search: '    if (this.lineUnwritten) { this.held = [chunk]; return true }\n',
    replace: '\n',
    tests: [BODY],
  },
  {
    name: 's18: the pending line is not appended when the first bytes arrive',
    file: 'src/proxy/metered.ts',
    search: '    this.unjournaled?.()\n    if (this.lineUnwritten)',
    replace: '    if (this.lineUnwritten)',
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
    name: 's18: chunks after a held one go straight out, ahead of it',
    file: 'src/proxy/metered.ts',
    search: '    if (this.held !== null) { this.held.push(chunk); return true }\n',
    replace: '\n',
    tests: [BODY, 'test/faults.test.ts'],
  },
  {
    name: 's18: the line is counted written before its write',
    file: 'src/proxy/metered.ts',
    search: '      this.lineUnwritten = true\n',
    replace: '\n',
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
