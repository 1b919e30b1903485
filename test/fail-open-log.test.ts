import t from 'tap'
import { FailOpenLog } from '../src/budgets/fail-open.js'
import { createLogger } from '../src/lib/log.js'
import { LogSink } from './support/log-sink.js'

// The fail-open log with a clock of its own: the first request of an outage named at once, the
// rest summed (none left out), and an outage longer than a minute said at error level.

function setup () {
  const sink = new LogSink()
  let clock = 1_000_000
  const log = new FailOpenLog(createLogger('info', sink), () => clock)
  const lines = () => sink.text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>)
  return { log, lines, advance: (ms: number) => { clock += ms } }
}

t.test('the first is named with user and event id; the others are counted in the summary', async (t) => {
  const { log, lines } = setup()
  log.note('budget', 'olga', 'ev-1', 'no answer within 300 ms')
  log.note('rate', 'piet', 'ev-2', 'no answer within 300 ms')
  log.note('budget', null, 'ev-3', 'no answer within 300 ms')
  log.note('budget', 'piet', null, 'no answer within 300 ms')
  log.close()
  const [first, summary, ...rest] = lines()
  t.match(first, { level: 40, user: 'olga', eventId: 'ev-1', check: 'budget', reason: 'no answer within 300 ms', failedOpenTotal: 1 })
  t.match(summary, { level: 40, failedOpen: 3, users: 2, firstEventId: 'ev-2', lastEventId: '(my-usage)', failedOpenTotal: 4 })
  t.same((summary.sampleUsers as string[]).sort(), ['(organization)', 'piet'], 'distinct users sampled')
  t.same(rest, [])
  t.equal(log.stats.total, 4)
  t.ok(log.stats.lastAt instanceof Date)
})

t.test('an outage over a minute is said at error level', async (t) => {
  const { log, lines, advance } = setup()
  log.note('budget', 'a', 'ev-1', 'down')
  advance(61_000)
  log.note('budget', 'b', 'ev-2', 'down')
  log.close()
  const all = lines()
  t.equal(all.length, 2)
  t.equal(all[1].level, 50, 'error')
  t.equal(all[1].episodeSeconds, 61)
})
