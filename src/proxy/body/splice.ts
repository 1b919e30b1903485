/** A byte range of a request body: start inclusive, end exclusive. */
export interface Span { start: number, end: number }

/** `bytes` with each span's content replaced by `value`, as slices (no copy of the rest). */
export function replaceSpans (bytes: Buffer, spans: readonly Span[], value: Buffer): Buffer[] {
  const parts: Buffer[] = []
  let at = 0
  for (const s of spans) {
    parts.push(bytes.subarray(at, s.start), value)
    at = s.end
  }
  parts.push(bytes.subarray(at))
  return parts
}
