import t from 'tap'
import { setFlagsFromString, getHeapStatistics } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { setImmediate as turn, setTimeout as sleep } from 'node:timers/promises'
import { PerformanceObserver, constants } from 'node:perf_hooks'
import { FLAT_MB, GAP_MS, HEADROOM_MB, RUN, growingPercent, keepGcHeadroom } from '../src/lib/gc-headroom.js'

// Full collections back to back on a nearly empty heap make V8 give the old space more room
// (src/lib/gc-headroom.ts). Collections are forced here with gc(), exposed for this file only.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as (options?: { type: 'minor' | 'major' }) => void

/** Lets the observer hear of the collections so far (PerformanceObserver delivers later). */
async function delivered (): Promise<void> { for (let i = 0; i < 5; i++) await turn() }

t.test('the growing factor leaves HEADROOM_MB above a small heap, V8 its own past it, never above 4x', async (t) => {
  t.equal(HEADROOM_MB, 48)
  t.equal(growingPercent(16), 300, '16 MB live: limit 64 MB')
  t.equal(growingPercent(24), 200, '24 MB live: limit 72 MB')
  t.equal(growingPercent(40), 120)
  t.equal(growingPercent(47.9), 101)
  t.equal(growingPercent(48), 0, 'a heap as large as the room: V8 decides')
  t.equal(growingPercent(300), 0)
  t.equal(growingPercent(4), 300, 'capped: V8 itself never goes past a factor of 4')
  t.equal(growingPercent(0), 300, 'an empty heap is taken as 1 MB, no division by zero')
  t.equal(growingPercent(10, 5), 0, 'another headroom')
})

t.test('a few full collections change nothing; a run of them turns the room on, once, and it stays', async (t) => {
  const flags: string[] = []
  const runs: Array<[number, number]> = []
  const stop = keepGcHeadroom({ headroomMb: 100_000, setFlags: (f) => flags.push(f), onRun: (n, mb) => runs.push([n, mb]) })
  t.teardown(stop)
  // V8 may run a full collection of its own among these (a busy machine, a coverage run): it
  // counts towards the run like a forced one, so the verdict is on the collections seen.
  let majors = 0
  const seen = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if ((e as unknown as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) majors++
  })
  seen.observe({ entryTypes: ['gc'] })
  t.teardown(() => seen.disconnect())
  for (let i = 0; i < RUN - 1; i++) { gc(); await delivered() }
  const early = majors >= RUN
  t.same(flags, early ? ['--heap-growing-percent=300'] : [], `${RUN - 1} collections (${majors} seen): no run yet, no flag`)
  t.equal(runs.length, early ? 1 : 0)
  for (let i = 0; i < 4 * RUN && runs.length === 0; i++) { gc(); await delivered() }
  t.equal(runs.length, 1, 'the run is reported')
  // Each collection adds one to the run, so it is declared on the RUN-th in a row.
  t.equal(runs[0][0], RUN, `${runs[0][0]} collections in a row`)
  t.ok(Math.abs(runs[0][1] - getHeapStatistics().used_heap_size / 1048576) < 64, 'with the live heap in MB')
  t.same(flags, ['--heap-growing-percent=300'], 'a heap far below the room gets the most V8 allows')
  for (let i = 0; i < RUN; i++) { gc(); await delivered() }
  t.equal(runs.length, 1, 'reported once')
  t.same(flags, ['--heap-growing-percent=300'], 'the same percent is not set again')
})

t.test('a heap that grows past the room is handed back to V8 (0); one that never needed room never gets a flag', async (t) => {
  gc()
  const live = getHeapStatistics().used_heap_size / 1048576
  const flags: string[] = []
  const stop = keepGcHeadroom({ headroomMb: live + 24, setFlags: (f) => flags.push(f) })
  t.teardown(stop)
  for (let i = 0; i < 4 * RUN && flags.length === 0; i++) { gc(); await delivered() }
  t.equal(flags.length, 1, 'room kept while the heap is small')
  t.ok(Number(flags[0].split('=')[1]) > 100, flags[0])
  const ballast = Array.from({ length: 48 }, () => new Array(131_072).fill(0).map((_, k) => k + 0.5)) // ~48 MB of live doubles
  gc(); await delivered()
  t.same(flags.at(-1), '--heap-growing-percent=0', 'past the room: V8 decides again')
  t.equal(ballast.length, 48)

  const none: string[] = []
  const stopNone = keepGcHeadroom({ headroomMb: 1, setFlags: (f) => none.push(f) })
  t.teardown(stopNone)
  for (let i = 0; i < 4 * RUN; i++) { gc(); await delivered() }
  t.same(none, [], 'a heap already past the room: nothing to set')
})

t.test('a failure while tuning stops the tuning and never reaches the process', async (t) => {
  let calls = 0
  const uncaught: unknown[] = []
  const onUncaught = (err: unknown): void => { uncaught.push(err) }
  process.on('uncaughtException', onUncaught)
  t.teardown(() => { process.off('uncaughtException', onUncaught) })
  const stop = keepGcHeadroom({ headroomMb: 100_000, setFlags: () => { calls++; throw new Error('no such flag') } })
  t.teardown(stop)
  for (let i = 0; i < 4 * RUN; i++) { gc(); await delivered() }
  t.equal(calls, 1, 'tried once, then the observer stopped')
  t.same(uncaught, [])
})

t.test('collections more than GAP_MS apart are no run; a pause starts the count again', async (t) => {
  const flags: string[] = []
  const runs: number[] = []
  const stop = keepGcHeadroom({ headroomMb: 100_000, setFlags: (f) => flags.push(f), onRun: (n) => runs.push(n) })
  t.teardown(stop)
  // Two bursts, each short of a run, together more than one: the pause between them is longer than the window.
  for (let i = 0; i < RUN - 2; i++) { gc(); await delivered() }
  await sleep(GAP_MS + 100)
  for (let i = 0; i < RUN - 2; i++) { gc(); await delivered() }
  t.same(runs, [], `${2 * (RUN - 2)} collections, never ${RUN} in a row: no run`)
  t.same(flags, [])
})

t.test('collections while the live heap grows are no run, however close together', async (t) => {
  const flags: string[] = []
  const runs: number[] = []
  const stop = keepGcHeadroom({ headroomMb: 100_000, setFlags: (f) => flags.push(f), onRun: (n) => runs.push(n) })
  t.teardown(stop)
  const kept: number[][] = []
  for (let i = 0; i < 2 * RUN; i++) {
    kept.push(new Array(Math.ceil((FLAT_MB + 1) * 131_072)).fill(0).map((_, k) => k + 0.5)) // more than FLAT_MB of live doubles each time
    gc(); await delivered()
  }
  t.same(runs, [], `${2 * RUN} collections, each leaving more than ${FLAT_MB} MB more live: no run`)
  t.same(flags, [])
  t.equal(kept.length, 2 * RUN)
})

t.test('minor collections (scavenges) are no run, however many', async (t) => {
  let minors = 0
  const count = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if ((e as unknown as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR) minors++
  })
  count.observe({ entryTypes: ['gc'] })
  t.teardown(() => count.disconnect())
  const flags: string[] = []
  const runs: number[] = []
  const stop = keepGcHeadroom({ headroomMb: 100_000, setFlags: (f) => flags.push(f), onRun: (n) => runs.push(n) })
  t.teardown(stop)
  for (let i = 0; i < 4 * RUN; i++) { gc({ type: 'minor' }); await delivered() }
  t.ok(minors >= 4 * RUN, `${minors} minor collections heard`)
  t.same(runs, [])
  t.same(flags, [])
})

t.test('stopped, it hears nothing', async (t) => {
  const runs: number[] = []
  const stop = keepGcHeadroom({ headroomMb: 100_000, setFlags: () => {}, onRun: (n) => runs.push(n) })
  stop()
  for (let i = 0; i < 2 * RUN; i++) { gc(); await delivered() }
  t.same(runs, [])
})
