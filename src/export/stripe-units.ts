import { roundDecimal, sumDecimals } from '../lib/decimal.js'

// The integer a Stripe meter sums, per row. Billed cost in micro-USD is rarely whole
// ("0.0000123456" USD is 12.3456 micro-USD), and rounding each row alone drifts: a million rows
// of 0.4 micro-USD would send 0. Instead each customer and month keeps a running total: the exact
// units of the rows delivered (E) and the integer units sent for them (S). A row of exact value
// b is sent as round(E + b) - S, after which S = round(E + b): the units sent for a customer and
// month never differ from the exact total by more than half a unit, whatever the number of rows.

/** Exact decimal text times 10^6, as exact decimal text: USD to micro-USD. */
export function microUnits (usd: string): string {
  const neg = usd.startsWith('-')
  const [int, frac = ''] = (neg ? usd.slice(1) : usd).split('.')
  const digits = (int + frac.padEnd(6, '0').slice(0, 6)).replace(/^0+(?=\d)/, '')
  const rest = frac.slice(6).replace(/0+$/, '')
  const out = rest === '' ? digits : `${digits}.${rest}`
  return neg && /[1-9]/.test(out) ? `-${out}` : out
}

export interface Running { exact: string, sent: bigint }

/** The units to send for a row of exact value `b` given the running total, and the total after it. */
export function nextUnits (total: Running, b: string): { units: bigint, after: Running } {
  const exact = sumDecimals([total.exact, b])
  const rounded = BigInt(roundDecimal(exact, 0))
  return { units: rounded - total.sent, after: { exact, sent: rounded } }
}
