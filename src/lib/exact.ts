// Exact amounts as people read them: Postgres writes a numeric with its full scale
// ("0.0143275740000000000000000000"), and the API, the CSV and the statement show the same value
// with every significant digit and no trailing zeros ("0.014327574"). Nothing is rounded here.

const DECIMAL = /^(-?)(\d+)(?:\.(\d*))?$/

/**
 * "1.6500" -> "1.65", "12.0000" -> "12", "0.000" and "-0.00" -> "0". Text that is not a plain
 * decimal (Postgres' NaN) goes out as written: a report never fails over how a number looks.
 */
export function exact (text: string): string {
  const m = DECIMAL.exec(text)
  if (!m) return text
  const int = m[2].replace(/^0+(?=\d)/, '')
  const frac = (m[3] ?? '').replace(/0+$/, '')
  const body = frac === '' ? int : `${int}.${frac}`
  return m[1] === '-' && /[1-9]/.test(body) ? `-${body}` : body
}

/** A copy of `row` with the named fields trimmed by exact(); null and numbers stay as they are. */
export function exactFields<T extends object> (row: T, fields: readonly string[]): T {
  const out = { ...row } as Record<string, unknown>
  for (const f of fields) {
    const v = out[f]
    if (typeof v === 'string') out[f] = exact(v)
  }
  return out as T
}
