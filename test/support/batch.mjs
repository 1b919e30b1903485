// Several test files in one process, one after another, each in a subtest of its own named for
// the file (test/run.mjs sends the short ones here). A test process's fixed cost, about a second
// of CPU here (Node, the TypeScript loader, tap, the sidecar's modules), is then paid once per
// batch instead of once per file. A file still gets its own database (createTestDb) and its own
// sidecars; only the modules are shared, which is why files that change the process (its
// environment, its signal handlers, its heap) say so and run alone: see test/run.mjs.
// Usage: TEST_BATCH=1 node --import=./test/support/ts-loader.mjs test/support/batch.mjs a.test.ts b.test.ts
import { pathToFileURL } from 'node:url'
import tap from 'tap'
import { file } from './batch-tap.mjs'

const timeout = Number(process.env.TEST_FILE_TIMEOUT ?? 120) * 1000
for (const path of process.argv.slice(2)) {
  let sub
  await tap.test(path, { timeout }, async (t) => {
    file(sub = t)
    await import(pathToFileURL(path).href)
  })
  // Alone, a file that tests nothing fails (no plan); in a batch its subtest would just pass.
  if (sub.counts.total === 0) tap.fail(`${path} tested nothing`)
}
file(tap)
