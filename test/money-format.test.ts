import t from 'tap'
import { readFileSync } from 'node:fs'
import { createContext, runInContext } from 'node:vm'
import { fileURLToPath } from 'node:url'
import { formatUsd, fromUnits, mulDivUp, toUnits } from '../src/lib/decimal.js'

// One rounding rule for every amount a person reads: the 402, "My usage" and the admin page.
// The page cannot import TypeScript, so web/admin/money.js ports formatUsd(); this file runs the
// port on the same amounts as the original, edge cases and a seeded random spread of magnitudes.

const port = (() => {
  const ctx = createContext({})
  runInContext(readFileSync(fileURLToPath(new URL('../web/admin/money.js', import.meta.url)), 'utf8'), ctx)
  return (ctx as { usageProxyMoney: { formatUsd: (v: string) => string } }).usageProxyMoney.formatUsd
})()

t.test('cents from a cent up, two significant digits below, never a non-zero amount as $0.00', async (t) => {
  const cases: Array<[string, string]> = [
    ['0', '$0.00'],
    ['0.000', '$0.00'],
    ['0.0025', '$0.0025'],
    ['0.000794', '$0.00079'],
    ['0.0007949', '$0.00079'],
    ['0.000795', '$0.0008'],
    ['0.0000000001', '$0.0000000001'],
    ['0.009999', '$0.01'],
    ['0.005', '$0.005'],
    ['0.01', '$0.01'],
    ['0.014999', '$0.01'],
    ['0.015', '$0.02'],
    ['0.1', '$0.10'],
    ['0.125', '$0.13'],
    ['0.99999', '$1.00'],
    ['12', '$12.00'],
    ['20.045', '$20.05'],
    ['1234567.891', '$1,234,567.89'],
    ['-0.5', '-$0.50'],
    ['-0.0025', '-$0.0025'],
    ['-0.001', '-$0.001'],
  ]
  for (const [v, want] of cases) t.equal(formatUsd(v), want, `${v} -> ${want}`)
  t.throws(() => formatUsd('1e-7'), /not a decimal/)
  t.throws(() => formatUsd('abc'), /not a decimal/)
})

t.test('the page\'s port formats every amount exactly as the server does', async (t) => {
  // xorshift32, seeded: the same amounts on every run; the seed is printed for a failure.
  const seed = Number(process.env.MONEY_SEED ?? 20261201) >>> 0
  let x = seed || 1
  const rnd = (n: number) => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x % n }
  const amounts = ['0', '0.0025', '0.000794', '0.009999', '0.995', '999.995', '-0.004', '1000000']
  for (let k = 0; k < 3000; k++) {
    const int = rnd(4) === 0 ? String(rnd(10_000_000)) : '0'
    const frac = Array.from({ length: rnd(20) }, () => (rnd(3) === 0 ? String(rnd(10)) : rnd(2) === 0 ? '9' : '0')).join('')
    amounts.push(`${rnd(10) === 0 ? '-' : ''}${int}${frac ? '.' + frac : ''}`)
  }
  const differ = amounts.filter((a) => port(a) !== formatUsd(a))
  t.same(differ.map((a) => [a, port(a), formatUsd(a)]), [], `seed ${seed}: ${amounts.length} amounts agree`)
  const hidden = amounts.filter((a) => /[1-9]/.test(a) && formatUsd(a).replace(/[-$,.0]/g, '') === '')
  t.same(hidden, [], 'no non-zero amount reads as zero')
})

t.test('estimates round up, never down: mulDivUp, and exact units both ways', async (t) => {
  t.equal(mulDivUp(1n, 1n, 3n), 1n, '1/3 of a unit holds a whole unit')
  t.equal(mulDivUp(10n, 3n, 5n), 6n, 'exact stays exact')
  t.equal(mulDivUp(7n, 1n, 2n), 4n)
  t.equal(fromUnits(toUnits('0.000000000000000001')), '0.000000000000000001')
  t.equal(fromUnits(toUnits('12.50')), '12.5')
  t.throws(() => toUnits('-1'), /not a decimal/)
})
