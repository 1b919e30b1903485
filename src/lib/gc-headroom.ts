import { PerformanceObserver, constants } from 'node:perf_hooks'
import { getHeapStatistics, setFlagsFromString } from 'node:v8'

// Each read of a large request body is a new buffer outside the JavaScript heap. That churn can
// leave V8's old-space limit so close to the live heap (within about a young generation of it)
// that full collections run back to back while the heap is nearly empty, each finding almost
// nothing to free: on Node 20 that doubled the CPU of a 500 KB chat request, in some processes
// and not in others (BENCHMARKS.md). V8 sets the limit after each full collection at the live
// size times a growing factor. Once a process has seen such a run of collections, the factor is
// kept high enough for the limit to sit HEADROOM_MB above the live heap: at most that much more
// garbage before a collection. A process that never sees one is left to V8's own choice.
//
// A run is told by its shape, not by a rate: RUN full collections in a row, each within GAP_MS of
// the one before, that leave the live heap where it was (within FLAT_MB). How many come per second
// depends on how fast requests arrive (a slower upstream, a slower client, a busier machine), so
// a rate of collections alone is met by one harness and not another; a growing heap (streams
// piling up) is not a run, whatever its rate.

const MB = 1024 * 1024
/** Old-space room above the live heap: more than the young generation V8 compares it with (32 MB was not). */
export const HEADROOM_MB = 48
/** V8's own factor is at most 4; this never asks for more. */
const MAX_PERCENT = 300
/** Full collections in a row that make a run. */
export const RUN = 4
/** The most time between two collections of a run. */
export const GAP_MS = 1000
/** How far the live heap may move over a run: a heap that grows is being used, not churned. */
export const FLAT_MB = 4

/** The --heap-growing-percent that keeps the limit `headroomMb` above a heap of `liveMb`; 0 leaves V8 its own. */
export function growingPercent (liveMb: number, headroomMb = HEADROOM_MB): number {
  if (liveMb >= headroomMb) return 0 // past this size V8's own factor leaves the room
  return Math.min(MAX_PERCENT, Math.ceil((100 * headroomMb) / Math.max(liveMb, 1)))
}

export interface HeadroomOptions {
  /** Hears of the first run of full collections, once: how many, the live heap, over how long. */
  onRun?: (collections: number, liveMb: number, spanMs: number) => void
  /** For tests: another headroom, and where the flag goes (v8.setFlagsFromString). */
  headroomMb?: number
  setFlags?: (flags: string) => void
}

/**
 * Watches full collections; after the first run (RUN in a row, GAP_MS apart at most, the live
 * heap flat within FLAT_MB), sets the growing factor after each one (V8 reads the flag each time
 * it sets the limit). Returns a stop function.
 */
export function keepGcHeadroom ({ onRun, headroomMb = HEADROOM_MB, setFlags = setFlagsFromString }: HeadroomOptions = {}): () => void {
  /** The collections of the run so far: when each ended, and the live heap it left (MB). */
  let at: number[] = []
  let live: number[] = []
  let keeping = false
  let applied = 0
  const majorDone = (end: number): void => {
    const liveMb = getHeapStatistics().used_heap_size / MB
    if (!keeping) {
      const last = at.length - 1
      if (last >= 0 && (end - at[last] > GAP_MS || Math.abs(liveMb - live[0]) > FLAT_MB)) { at = []; live = [] }
      at.push(end)
      live.push(liveMb)
      if (at.length < RUN) return
      keeping = true
      onRun?.(RUN, liveMb, end - at[0])
      at = live = []
    }
    const percent = growingPercent(liveMb, headroomMb)
    if (percent === applied) return
    setFlags(`--heap-growing-percent=${percent}`)
    applied = percent
  }
  const observer = new PerformanceObserver((list) => {
    try {
      for (const e of list.getEntries()) {
        if ((e as unknown as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) majorDone(e.startTime + e.duration)
      }
    } catch {
      // A tuning aid: whatever fails here leaves V8 its defaults and must not reach the crash guard.
      observer.disconnect()
    }
  })
  observer.observe({ entryTypes: ['gc'] })
  return () => observer.disconnect()
}
