import t from 'tap'
import { backoffMs, retryAfterMs } from '../src/export/backoff.js'

// A receiver's Retry-After is a floor for the next try, read as delta-seconds or an HTTP date;
// a huge, negative or unreadable one must not park a sink for days or make it hammer.

t.test('Retry-After: huge, negative, date and garbage forms', async (t) => {
  const now = Date.parse('2026-12-06T12:00:00Z')
  t.equal(retryAfterMs('120', now), 120_000, 'delta-seconds')
  t.equal(retryAfterMs('99999999999999999999', now), 3_600_000, 'a huge delta is capped at an hour')
  t.equal(retryAfterMs('Fri, 31 Dec 2100 23:59:59 GMT', now), 3_600_000, 'a far date is capped at an hour')
  t.equal(retryAfterMs('Sun, 06 Dec 2026 12:00:30 GMT', now), 30_000, 'an HTTP date counts from now')
  t.equal(retryAfterMs('Sun, 06 Dec 2026 11:00:00 GMT', now), 0, 'a past date means now')
  t.ok((retryAfterMs('-5', now) ?? 0) >= 0, 'a negative value never yields a negative wait')
  t.equal(retryAfterMs('soon', now), undefined, 'garbage is ignored')
  t.equal(retryAfterMs(undefined, now), undefined)
  const wait = backoffMs(0, { baseMs: 10, maxMs: 100 }, retryAfterMs('99999999999', now), () => 0.5)
  t.equal(wait, 3_600_000, 'the capped Retry-After is the floor of the backoff')
})
