import t from 'tap'
import { RefusalRows } from '../src/budgets/refusal-rows.js'

// Which refusals become rows: per user, the first few of each minute; the rest are only counted.

t.test('per user and per minute: the first N refusals are recorded, the rest counted', async (t) => {
  let now = Date.UTC(2026, 11, 6, 15, 0, 10)
  const rows = new RefusalRows(3, () => now)
  t.same([1, 2, 3, 4, 5].map(() => rows.admit('ann')), [true, true, true, false, false], 'three of five')
  t.equal(rows.unrecorded, 2)
  t.same([rows.admit('bob'), rows.admit(null), rows.admit(null)], [true, true, true], 'another user, and the organization, count apart')
  now += 49_000 // 15:00:59
  t.equal(rows.admit('ann'), false, 'still the same minute')
  now += 1_000 // 15:01:00
  t.same([1, 2, 3, 4].map(() => rows.admit('ann')), [true, true, true, false], 'a new minute starts over')
  t.equal(rows.unrecorded, 4)
})
