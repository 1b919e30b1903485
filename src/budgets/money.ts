// Exact decimal arithmetic for estimates and messages: amounts are BigInt at a fixed scale of
// 18 decimals, never floats. Postgres holds the authoritative numbers; this only prepares them.

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

/** "$20.04": half-up to the cent, for a person to read. */
export function dollars (text: string): string {
  const u = toUnits(text.replace(/^-/, ''))
  const cents = (u * 100n + ONE / 2n) / ONE
  return `$${cents / 100n}.${(cents % 100n).toString().padStart(2, '0')}`
}

/** Postgres numeric text, trimmed: "1.6500000" -> "1.65". */
export function trimDecimal (text: string): string {
  return text.includes('.') ? text.replace(/0+$/, '').replace(/\.$/, '') : text
}
