// Exact decimal arithmetic: money is never a float here. Postgres holds the authoritative
// numbers; this module sums and compares its decimal text outside SQL, prepares estimates and
// messages as BigInt at a fixed scale, and formats amounts for people to read.

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

// Exact amounts as people read them: Postgres writes a numeric with its full scale
// ("0.0143275740000000000000000000"), and the API, the CSV, the statement and the messages show
// the same value with every significant digit and no trailing zeros ("0.014327574").
const PLAIN_DECIMAL = /^(-?)(\d+)(?:\.(\d*))?$/

/**
 * "1.6500" -> "1.65", "12.0000" -> "12", "0.000" and "-0.00" -> "0". Text that is not a plain
 * decimal (Postgres' NaN) goes out as written: a report never fails over how a number looks.
 */
export function trimDecimal (text: string): string {
  const m = PLAIN_DECIMAL.exec(text)
  if (!m) return text
  const int = m[2].replace(/^0+(?=\d)/, '')
  const frac = (m[3] ?? '').replace(/0+$/, '')
  const body = frac === '' ? int : `${int}.${frac}`
  return m[1] === '-' && /[1-9]/.test(body) ? `-${body}` : body
}

/** A copy of `row` with the named fields trimmed by trimDecimal(); null and numbers stay as they are. */
export function trimDecimalFields<T extends object> (row: T, fields: readonly string[]): T {
  const out = { ...row } as Record<string, unknown>
  for (const f of fields) {
    const v = out[f]
    if (typeof v === 'string') out[f] = trimDecimal(v)
  }
  return out as T
}

// Units: estimates multiply and divide, so they work on BigInt at one fixed scale of 18 decimals.
const SCALE = 18
const ONE = 10n ** BigInt(SCALE)

/** "0.000000075" -> 75_000_000_000n. Throws on anything but a plain non-negative decimal. */
export function toUnits (text: string): bigint {
  const m = /^(\d+)(?:\.(\d+))?$/.exec(text.trim())
  if (!m) throw new Error(`not a decimal: ${text}`)
  const frac = (m[2] ?? '').slice(0, SCALE).padEnd(SCALE, '0')
  return BigInt(m[1]) * ONE + BigInt(frac)
}

/** Units back to the shortest decimal text: 1_500_000_000_000_000_000n -> "1.5". */
export function fromUnits (units: bigint): string {
  const neg = units < 0n
  const abs = neg ? -units : units
  const int = abs / ONE
  const frac = (abs % ONE).toString().padStart(SCALE, '0').replace(/0+$/, '')
  return `${neg ? '-' : ''}${int}${frac ? '.' + frac : ''}`
}

/** a × b ÷ c, rounded up: an estimate errs on the side of holding too much. */
export function mulDivUp (a: bigint, b: bigint, c: bigint): bigint {
  const p = a * b
  return p % c === 0n ? p / c : p / c + 1n
}

/**
 * Money for a person to read: the one rule behind the 402, "My usage" and the admin page
 * (web/admin/money.js is its port; test/money-format.test.ts checks that the two agree). Half up
 * to the cent with thousands grouped, "$1,234.57"; an amount under a cent keeps two significant
 * digits, so a non-zero amount never reads as nothing ("$0.0025", "$0.00079"); zero is "$0.00".
 */
export function formatUsd (text: string): string {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(text.trim())
  if (!m) throw new Error(`not a decimal: ${text}`)
  const [, sign, int, frac = ''] = m
  const first = frac.search(/[1-9]/)
  const underCent = /^0+$/.test(int) && first >= 2
  const places = underCent ? first + 2 : 2
  const rounded = (BigInt(int + frac.padEnd(places + 1, '0').slice(0, places + 1)) + 5n) / 10n
  const s = rounded.toString().padStart(places + 1, '0')
  const whole = s.slice(0, -places).replace(/\B(?=(\d{3})+(?!\d))/g, ',')
  // A sub-cent amount that rounded up to a whole cent reads as cents: "$0.01", not "$0.0100".
  const cents = underCent ? s.slice(-places).replace(/0+$/, '').padEnd(2, '0') : s.slice(-places)
  return `${sign && rounded !== 0n ? '-' : ''}$${whole}.${cents}`
}
