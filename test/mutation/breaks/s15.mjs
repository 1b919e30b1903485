// Breaks of session 15's work: npm test's runner (test/run.mjs) must fail a run a file failed.
export const BREAKS = [
  {
    name: 'runner: a file that wrote no summary counts as passed',
    file: 'test/run.mjs',
    search: "const ok = code === 0 && signal === null && summary !== '' && r.fail === 0",
    replace: 'const ok = code === 0 && r.fail === 0',
    tests: ['test/run.test.ts'],
  },
  {
    name: 'runner: exits 0 whatever failed',
    file: 'test/run.mjs',
    search: 'process.exit(failedFiles.length > 0 ? 1 : 0)',
    replace: 'process.exit(0)',
    tests: ['test/run.test.ts'],
  },
  {
    name: "runner: a failing file's output is not indented (its summary line reads as the run's)",
    file: 'test/run.mjs',
    search: "process.stdout.write(text.replace(/^/gm, '    ') + '\\n')",
    replace: "process.stdout.write(text + '\\n')",
    tests: ['test/run.test.ts'],
  },
  {
    name: 'runner: skips count as passes',
    file: 'test/run.mjs',
    search: "skip: count('skip')",
    replace: "skip: 0",
    tests: ['test/run.test.ts'],
  },
]
