import t from 'tap'
import { uuid7 } from '../src/lib/uuid7.js'
import { newRecord } from '../src/usage/ledger/record.js'

// Event ids are UUIDs of version 7 (RFC 9562): the millisecond first, so usage_events' primary key
// takes them at its right-hand edge (BENCHMARKS.md, "Issue 26, session 19").

const V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
/** The millisecond a version 7 id carries. */
const msOf = (id: string): number => parseInt(id.slice(0, 8) + id.slice(9, 13), 16)

t.test('the layout: 48 bits of milliseconds, version 7, the RFC variant', async (t) => {
  const id = uuid7(0x0123456789ab)
  t.match(id, V7)
  t.equal(id.slice(0, 15), '01234567-89ab-7')
  t.equal(msOf(uuid7(1_765_000_000_123)), 1_765_000_000_123)
  t.equal(msOf(uuid7(0)), 0)
  t.match(uuid7(0), V7)
  t.match(uuid7(2 ** 48 + 5), V7, 'a clock past 48 bits still gives a well-formed id')
  t.match(uuid7(-1), V7, 'and so does one before 1970')
  t.match(uuid7(1.7), V7, 'a fractional clock is cut to its millisecond')
  t.match(uuid7(Number.NaN), V7, 'a clock that is not a number gives a well-formed id')
  t.match(uuid7(Number.POSITIVE_INFINITY), V7)
})

t.test('ids of a later millisecond sort after those of an earlier one (as text and as Postgres uuids)', async (t) => {
  const ids = [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_255, 1_700_000_000_256, 1_800_000_000_000]
    .map((ms) => uuid7(ms))
  t.same([...ids].sort(), ids)
})

t.test('ids of one millisecond stay distinct: 74 random bits', async (t) => {
  const ids = new Set(Array.from({ length: 20_000 }, () => uuid7(1_700_000_000_000)))
  t.equal(ids.size, 20_000)
  const tails = new Set([...ids].map((id) => id.slice(15)))
  t.equal(tails.size, 20_000, 'the random part differs, not only the version nibble')
})

t.test("a record's event id is a version 7 id of the moment the record is made", async (t) => {
  const before = Date.now()
  const a = newRecord({ organizationId: 'o', userId: 'u', externalUserId: 'o_u', endpoint: 'chat/completions', model: 'm', streamed: false, markupPercent: '0', chatId: null })
  const after = Date.now()
  t.match(a.eventId, V7)
  t.ok(msOf(a.eventId) >= before && msOf(a.eventId) <= after, `${msOf(a.eventId)} within [${before}, ${after}]`)
  const b = newRecord({ organizationId: 'o', userId: 'u', externalUserId: 'o_u', endpoint: 'chat/completions', model: 'm', streamed: false, markupPercent: '0', chatId: null })
  t.not(a.eventId, b.eventId)
})
