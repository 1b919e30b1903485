// How long an exporter waits before trying a receiver again: exponential from `baseMs`, capped at
// `maxMs`, with full jitter (a random point of the interval), so replicas and sinks that failed
// together do not come back together. A receiver's Retry-After is a floor, never shortened.

export interface BackoffOptions { baseMs: number, maxMs: number }

export function backoffMs (attempt: number, opts: BackoffOptions, retryAfterMs?: number, random: () => number = Math.random): number {
  const ceiling = Math.min(opts.maxMs, opts.baseMs * 2 ** Math.min(attempt, 30))
  const jittered = Math.round(ceiling / 2 + random() * ceiling / 2)
  return Math.max(jittered, retryAfterMs ?? 0)
}

/**
 * A Retry-After header in milliseconds: delta-seconds or an HTTP date (RFC 9110 10.2.3).
 * Undefined when absent or unreadable; capped at an hour, so a bad header cannot stop a sink.
 */
export function retryAfterMs (header: string | null | undefined, now: number = Date.now()): number | undefined {
  if (header === null || header === undefined || header.trim() === '') return undefined
  const h = header.trim()
  let ms: number
  if (/^\d+$/.test(h)) ms = Number(h) * 1000
  else {
    const at = Date.parse(h)
    if (Number.isNaN(at)) return undefined
    ms = Math.max(0, at - now)
  }
  return Math.min(ms, 3_600_000)
}
