// Exact sums of decimal strings (as Postgres and OpenRouter write them), for totals computed
// outside SQL. BigInt at a common scale: never a float.

const DECIMAL = /^-?\d+(\.\d+)?$/

function parts (v: string): { digits: bigint, scale: number } {
  if (!DECIMAL.test(v)) throw new Error(`not a decimal: ${JSON.stringify(v)}`)
  const neg = v.startsWith('-')
  const [int, frac = ''] = (neg ? v.slice(1) : v).split('.')
  const digits = BigInt(int + frac)
  return { digits: neg ? -digits : digits, scale: frac.length }
}

/** The exact sum, written with the largest scale among the inputs (as Postgres' sum does). */
export function sumDecimals (values: readonly string[]): string {
  const ps = values.map(parts)
  const scale = ps.reduce((m, p) => Math.max(m, p.scale), 0)
  let total = 0n
  for (const p of ps) total += p.digits * 10n ** BigInt(scale - p.scale)
  const neg = total < 0n
  const s = (neg ? -total : total).toString().padStart(scale + 1, '0')
  const out = scale === 0 ? s : `${s.slice(0, -scale)}.${s.slice(-scale)}`
  return neg ? `-${out}` : out
}

/** Equal as numbers, whatever the trailing zeros: '1.50' and '1.5'. */
export function sameDecimal (a: string, b: string): boolean {
  return sumDecimals([a, `-${b}`.replace(/^--/, '')]).replace(/[-.0]/g, '') === ''
}

/** Rounded half up to `places` for people to read; the exact value stays in the data. */
export function roundDecimal (v: string, places: number): string {
  const neg = v.startsWith('-')
  const [int, frac = ''] = (neg ? v.slice(1) : v).split('.')
  const digits = BigInt(int + frac.padEnd(places + 1, '0').slice(0, places + 1))
  const rounded = (digits + 5n) / 10n
  const s = rounded.toString().padStart(places + 1, '0')
  const out = places > 0 ? `${s.slice(0, -places)}.${s.slice(-places)}` : s
  return (neg && rounded !== 0n ? '-' : '') + out
}
