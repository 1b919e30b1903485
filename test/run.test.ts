import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// npm test's runner (test/run.mjs) is what says the suite passed: a failing, killed or silently
// exiting file must fail the run, and its last line must count what each file reported.

const ROOT = join(import.meta.dirname, '..')
const FIX = 'test/fixtures/runner'

function run (files: string[]): { status: number | null, lines: string[], out: string, times: string } {
  const times = join(mkdtempSync(join(tmpdir(), 'runner-')), 'times.json')
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
