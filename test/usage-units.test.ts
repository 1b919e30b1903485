import t from 'tap'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { request } from 'undici'
import { roundDecimal, sameDecimal, sumDecimals } from '../src/lib/decimal.js'
import { pageRoutes } from '../src/admin/page.js'
import { createAdmin } from '../src/admin/router.js'
import { csvField, csvLine } from '../src/admin/csv.js'
import { createLogger } from '../src/lib/log.js'

// The small pure pieces of the usage views: exact decimal sums and rounding, CSV fields, and the
// page's answer when its files are missing from a deployment.

t.test('exact decimal sums, whatever the signs and scales', async (t) => {
  t.equal(sumDecimals(['0.1', '0.2']), '0.3')
  t.equal(sumDecimals(['1.5', '-2.25', '3']), '2.25')
  t.equal(sumDecimals(['-1.5', '0.25']), '-1.25')
  t.equal(sumDecimals([]), '0')
  t.equal(sumDecimals(['0.000000000000000001', '0.999999999999999999']), '1.000000000000000000')
  t.ok(sameDecimal('1.50', '1.5'))
  t.ok(sameDecimal('-2', '-2.000'))
  t.notOk(sameDecimal('1.5', '1.50001'))
  t.throws(() => sumDecimals(['1e5']), /not a decimal/)
})

t.test('rounding half up to a number of places', async (t) => {
  t.equal(roundDecimal('0.125', 2), '0.13')
  t.equal(roundDecimal('0.124999', 2), '0.12')
  t.equal(roundDecimal('-0.125', 2), '-0.13')
  t.equal(roundDecimal('-0.001', 2), '0.00', 'no negative zero')
  t.equal(roundDecimal('7', 0), '7')
})

t.test('CSV fields are quoted only when they must be', async (t) => {
  t.equal(csvField(null), '')
  t.equal(csvField(12), '12')
  t.equal(csvField('a,b'), '"a,b"')
  t.equal(csvField('say "hi"'), '"say ""hi"""')
  t.equal(csvField('two\nlines'), '"two\nlines"')
  t.equal(csvLine(['a', null, '0.10']), 'a,,0.10\r\n')
})

t.test('a deployment without web/admin answers 500 naming what is missing', async (t) => {
  const handler = createAdmin('admin-key-0123456789abcdef', pageRoutes('/nonexistent/web/admin'), createLogger('silent'))
  const server = createServer(handler)
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  try {
    const res = await request(`http://127.0.0.1:${(server.address() as AddressInfo).port}/admin/`)
    t.equal(res.statusCode, 500)
    const body = await res.body.json() as { error: { code: string, message: string } }
    t.equal(body.error.code, 'page_missing')
    t.match(body.error.message, /index\.html is missing/)
  } finally {
    server.close()
  }
})

t.test('outcomes from totals: ok is the exact difference, and absent when nothing ended ok', async (t) => {
  const { withOkOutcome } = await import('../src/usage/reports/totals.js')
  const row = (key: string, requests: number, billed: string) => ({ key, requests, prompt_tokens: '0', completion_tokens: '0', cached_tokens: '0', reasoning_tokens: '0', total_tokens: '0', cost_usd: billed, billed_cost_usd: billed })
  const failed = [row('client_aborted', 2, '0.30'), row('upstream_error', 1, '0')]
  const all = withOkOutcome(row('', 10, '1.25'), failed)
  t.same(all.map((r) => [r.key, r.requests, r.billed_cost_usd]), [['ok', 7, '0.95'], ['client_aborted', 2, '0.30'], ['upstream_error', 1, '0']])
  t.same(withOkOutcome(row('', 3, '0.30'), failed).map((r) => r.key), ['client_aborted', 'upstream_error'])
})
