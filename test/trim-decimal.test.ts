import t from 'tap'
import { trimDecimal, trimDecimalFields } from '../src/lib/decimal.js'

// Exact amounts as people read them: every significant digit, no trailing zeros, zero as "0".

t.test('trailing zeros and a trailing point go, every significant digit stays', async (t) => {
  const cases: Array<[string, string]> = [
    ['0.0143275740000000000000000000', '0.014327574'],
    ['0.407184836352750000000000', '0.40718483635275'],
    ['12.5000', '12.5'],
    ['12.0000', '12'],
    ['12.', '12'],
    ['100', '100'],
    ['0', '0'],
    ['0.000', '0'],
    ['-0.00', '0'],
    ['-0', '0'],
    ['-1.50', '-1.5'],
    ['-0.0000010', '-0.000001'],
    ['007.10', '7.1'],
    ['0.00000000000000000000000001', '0.00000000000000000000000001'],
    ['123456789012345678901234567890.123456789012345678900', '123456789012345678901234567890.1234567890123456789'],
  ]
  for (const [v, want] of cases) t.equal(trimDecimal(v), want, `${v} -> ${want}`)
})

t.test('text that is not a plain decimal goes out as written', async (t) => {
  for (const v of ['NaN', '', '1e-7', 'abc', '1.5 ']) t.equal(trimDecimal(v), v)
})

t.test('exactFields trims the named string fields of a copy, and nothing else', async (t) => {
  const row = { cost_usd: '1.2500', billed_cost_usd: null, requests: 3, note: '1.50' }
  t.same(trimDecimalFields(row, ['cost_usd', 'billed_cost_usd', 'requests']), { cost_usd: '1.25', billed_cost_usd: null, requests: 3, note: '1.50' })
  t.equal(row.cost_usd, '1.2500', 'the row itself is left as it was')
})
