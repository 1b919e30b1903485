// Preloaded into a Node target (`node --import ./bench/gc-probe.js ...`) by bench/independent.js:
// counts garbage collections by kind and their main-thread time, and on SIGUSR2 writes them with
// the heap's state to $TMPDIR/gc-probe-<pid>.json, so a harness can read a process's GC regime
// over exactly its measured window. Nothing else in the process changes.
import { PerformanceObserver, constants } from 'node:perf_hooks'
import { writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { getHeapStatistics } from 'node:v8'

const counts = { minor: 0, major: 0, incremental: 0, weak: 0, minorMs: 0, majorMs: 0 }
const kinds = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weak',
}
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const k = kinds[e.detail?.kind] ?? 'minor'
    counts[k]++
    if (k === 'major') counts.majorMs += e.duration
    else if (k === 'minor') counts.minorMs += e.duration
  }
}).observe({ entryTypes: ['gc'] })
let seq = 0
process.on('SIGUSR2', () => {
  const h = getHeapStatistics()
  const m = process.memoryUsage()
  writeFileSync(join(tmpdir(), `gc-probe-${process.pid}.json`), JSON.stringify({
    seq: ++seq, ...counts, heapUsedMb: h.used_heap_size / 1048576, heapTotalMb: h.total_heap_size / 1048576,
    externalMb: m.external / 1048576, arrayBuffersMb: m.arrayBuffers / 1048576, rssMb: m.rss / 1048576,
  }))
})
