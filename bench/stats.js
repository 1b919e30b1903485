// Small statistics helpers for latency samples (milliseconds).

/** The p-th percentile (0..100) by nearest rank; NaN for no samples. */
export function percentile (sorted, p) {
  if (sorted.length === 0) return NaN
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]
}

export function sortedCopy (samples) {
  return Float64Array.from(samples).sort()
}

export function summarize (samples) {
  const s = sortedCopy(samples)
  return { n: s.length, p50: percentile(s, 50), p90: percentile(s, 90), p99: percentile(s, 99), max: s.length ? s[s.length - 1] : NaN }
}

export const mean = (xs) => xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN
