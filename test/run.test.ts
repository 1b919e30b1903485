import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// npm test's runner (test/run.mjs) is what says the suite passed: a failing, killed or silently
// exiting file must fail the run, and its last line must count what each file reported.

const ROOT = join(import.meta.dirname, '..')
const FIX = 'test/fixtures/runner'

function run (files: string[], lastTimes: Record<string, number> = {}): { status: number | null, lines: string[], out: string, times: string } {
  const times = join(mkdtempSync(join(tmpdir(), 'runner-')), 'times.json')
  writeFileSync(times, JSON.stringify(Object.fromEntries(Object.entries(lastTimes).map(([f, s]) => [`${FIX}/${f}.ts`, s]))))
  const r = spawnSync(process.execPath, ['test/run.mjs', ...files.map((f) => `${FIX}/${f}.ts`)], {
    cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { PATH: process.env.PATH ?? '', TEST_TIMES_FILE: times, TAP_TIMEOUT: '30' },
  })
  return { status: r.status, lines: r.stdout.trimEnd().split('\n'), out: r.stdout, times: readFileSync(times, 'utf8') }
}

t.test('passing files: exit 0, the last line counts passes, skips are counted apart', async (t) => {
  const r = run(['pass'])
  t.equal(r.status, 0)
  t.equal(r.lines.at(-1), '1 passed, 0 failed')
  t.match(r.out, /^# \{ total: 2, pass: 1, fail: 0, skip: 1, todo: 0 \}$/m)
  t.match(r.out, /^ok .* test\/fixtures\/runner\/pass\.ts {2}\(1 passed, 1 skipped\)$/m)
  t.ok(JSON.parse(r.times)['test/fixtures/runner/pass.ts'] > 0, 'its time kept for the next run')
})

t.test('a failing assertion fails the run and shows what the file wrote, indented', async (t) => {
  const r = run(['pass', 'fail'])
  t.equal(r.status, 1)
  t.equal(r.lines.at(-1), '2 passed, 1 failed')
  t.match(r.out, /^FAIL .* test\/fixtures\/runner\/fail\.ts/m)
  t.match(r.out, /^ {4}not ok 2 - one is not two$/m, 'the file\'s own output, indented')
  t.equal(r.out.match(/^# \{ total/gm)?.length, 1, 'one summary line at the margin: the run\'s')
  t.match(r.out, /^failed: test\/fixtures\/runner\/fail\.ts$/m)
})

t.test('a file killed before its summary, or one that tests nothing, fails the run', async (t) => {
  const r = run(['killed', 'no-tap'])
  t.equal(r.status, 1)
  t.match(r.out, /^FAIL .* test\/fixtures\/runner\/killed\.ts .*exit SIGKILL\)$/m)
  t.match(r.out, /^FAIL .* test\/fixtures\/runner\/no-tap\.ts/m)
  t.equal(r.lines.at(-1), '0 passed, 2 failed')
})

t.test('short files share a process, one after another, each with its own t', async (t) => {
  const r = run(['batch-a.test', 'batch-b.test'])
  t.equal(r.status, 0, r.out)
  t.match(r.out, /^ok .* the 2 files above, in one process {2}\(\d+ passed\)$/m)
  t.match(r.out, /^ok .* test\/fixtures\/runner\/batch-a\.test\.ts$/m)
  t.match(r.out, /^ok .* test\/fixtures\/runner\/batch-b\.test\.ts$/m, 'each file\'s teardown ran before the other started')
  t.match(r.lines.at(-1), /^[1-9]\d* passed, 0 failed$/)
  t.ok(JSON.parse(r.times)['test/fixtures/runner/batch-a.test.ts'] >= 0, 'a batched file\'s own time kept')
})

t.test('in a batch, the failing file is the one named; a file that tests nothing fails there too', async (t) => {
  const r = run(['batch-a.test', 'batch-fails.test', 'batch-empty.test'])
  t.equal(r.status, 1)
  t.match(r.out, /^FAIL .* test\/fixtures\/runner\/batch-fails\.test\.ts$/m)
  t.match(r.out, /^FAIL .* test\/fixtures\/runner\/batch-empty\.test\.ts$/m)
  t.match(r.out, /^ok .* test\/fixtures\/runner\/batch-a\.test\.ts$/m)
  t.match(r.out, /^FAIL .* the 3 files above, in one process/m)
  t.match(r.out, /^failed: test\/fixtures\/runner\/batch-(fails|empty)\.test\.ts test\/fixtures\/runner\/batch-(fails|empty)\.test\.ts$/m)
})

t.test('a file that kills its batch fails the files left without a result', async (t) => {
  // The heavier file starts first: the one that dies, then the one it takes down.
  const r = run(['batch-dies.test', 'batch-a.test'], { 'batch-dies.test': 2, 'batch-a.test': 1 })
  t.equal(r.status, 1)
  t.match(r.out, /^FAIL .* test\/fixtures\/runner\/batch-a\.test\.ts {2}\(no result\)$/m)
  t.match(r.out, /^FAIL .* the 2 files above, in one process .*exit SIGKILL\)$/m)
})

t.test('a file marked for a process of its own, or slow last time, runs alone', async (t) => {
  const r = run(['batch-own.test', 'batch-a.test', 'batch-b.test'], { 'batch-b.test': 60 })
  t.equal(r.status, 0, r.out)
  t.match(r.out, /^ok .* test\/fixtures\/runner\/batch-own\.test\.ts {2}\(1 passed\)$/m, 'the marker line')
  t.match(r.out, /^ok .* test\/fixtures\/runner\/batch-b\.test\.ts {2}\(\d+ passed\)$/m, 'over TEST_ALONE_S last time')
  t.notMatch(r.out, /in one process/, 'batch-a is left alone in its batch: a batch of one is a process of its own')
})
