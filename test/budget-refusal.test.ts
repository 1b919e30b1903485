import t from 'tap'
import { DEFAULT_EXCEEDED_MESSAGE, exceededMessage, leftUsd, usedUp, type ExceededFacts } from '../src/budgets/refusal.js'

// What the person in the chat reads when a budget refuses: which budget, and why. "Used up" only
// when spend and the holds of requests in flight reach the limit; otherwise what this request
// could cost, what is left, and what to do.

const facts = (f: Partial<ExceededFacts>): ExceededFacts => ({
  scope: 'user', limitUsd: '0.10', spentUsd: '0', reservedUsd: '0', estimateUsd: '0.05', period: 'month',
  periodStart: new Date('2026-11-01T00:00:00Z'), ...f,
})

t.test('a request that does not fit an unspent budget is not told the budget is used up', async (t) => {
  const m = exceededMessage(DEFAULT_EXCEEDED_MESSAGE, facts({ spentUsd: '0', estimateUsd: '0.1200001' }))
  t.equal(m, 'This request could cost up to $0.12, and $0.10 of your monthly budget of $0.10 is left. ' +
    'Ask for a shorter answer (a smaller max_tokens) or send a shorter conversation. It resets on 2026-12-01 00:00 UTC.')
  t.notMatch(m, /used up/)
})

t.test('"used up" when spent + reserved reach the limit, and only then', async (t) => {
  t.equal(exceededMessage(DEFAULT_EXCEEDED_MESSAGE, facts({ spentUsd: '0.1004', estimateUsd: '0.001' })),
    'Your monthly budget of $0.10 is used up ($0.10 spent). It resets on 2026-12-01 00:00 UTC.')
  t.equal(exceededMessage(DEFAULT_EXCEEDED_MESSAGE, facts({ spentUsd: '0.06', reservedUsd: '0.04' })),
    'Your monthly budget of $0.10 is used up ($0.06 spent, $0.04 held by requests in progress). It resets on 2026-12-01 00:00 UTC.')
  t.ok(usedUp({ limitUsd: '1', spentUsd: '0.6', reservedUsd: '0.4' }), 'exactly at the limit')
  t.notOk(usedUp({ limitUsd: '1', spentUsd: '0.6', reservedUsd: '0.399999999999' }), 'a billionth short of it')
  t.equal(leftUsd({ limitUsd: '1', spentUsd: '0.6', reservedUsd: '0.399999999999' }), '0.000000000001')
  t.equal(leftUsd({ limitUsd: '1', spentUsd: '1.2', reservedUsd: '0' }), '0', 'never below zero')
})

t.test('the organization\'s budget is named as such; total budgets do not reset', async (t) => {
  t.equal(exceededMessage(DEFAULT_EXCEEDED_MESSAGE, facts({ scope: 'organization', limitUsd: '50', spentUsd: '49.99', estimateUsd: '0.02', period: 'total' })),
    'This request could cost up to $0.02, and $0.01 of the organization\'s total budget of $50.00 is left. ' +
    'Ask for a shorter answer (a smaller max_tokens) or send a shorter conversation. It does not reset.')
  t.match(exceededMessage(DEFAULT_EXCEEDED_MESSAGE, facts({ scope: 'organization', limitUsd: '0', period: 'day' })),
    /^The organization's daily budget of \$0\.00 is used up \(\$0\.00 spent\)\. It resets on 2026-11-02 00:00 UTC\.$/)
  t.match(exceededMessage(DEFAULT_EXCEEDED_MESSAGE, facts({ scope: 'default-user', limitUsd: '0', period: 'week', periodStart: new Date('2026-11-30T00:00:00Z') })),
    /^Your weekly budget/)
})

t.test('amounts under a cent keep their digits', async (t) => {
  const m = exceededMessage(DEFAULT_EXCEEDED_MESSAGE, facts({ limitUsd: '0.0025', spentUsd: '0.0019', reservedUsd: '0.0001', estimateUsd: '0.000794' }))
  t.equal(m, 'This request could cost up to $0.00079, and $0.0005 of your monthly budget of $0.0025 is left. ' +
    'Ask for a shorter answer (a smaller max_tokens) or send a shorter conversation. It resets on 2026-12-01 00:00 UTC.')
  t.notMatch(m, /\$0\.00\b(?!\d)/, 'no amount reads $0.00')
})

t.test('BUDGET_EXCEEDED_MESSAGE: the old placeholders keep working, the new ones fill, unknown ones stay', async (t) => {
  const old = 'Blocked: {scope} {period} limit {limit}, spent {spent}, resets {resets_at}. {reset} {unknown}'
  t.equal(exceededMessage(old, facts({ spentUsd: '0.02', estimateUsd: '0.5' })),
    'Blocked: Your monthly limit $0.10, spent $0.02, resets 2026-12-01 00:00 UTC. It resets on 2026-12-01 00:00 UTC. {unknown}')
  const all = '[{estimate}|{left}|{reserved}|{reason}|{advice}]'
  t.equal(exceededMessage(all, facts({ spentUsd: '0.02', reservedUsd: '0.03', estimateUsd: '0.07' })),
    '[$0.07|$0.05|$0.03|This request could cost up to $0.07, and $0.05 of your monthly budget of $0.10 is left.|Ask for a shorter answer (a smaller max_tokens) or send a shorter conversation.]')
  t.equal(exceededMessage('Sorry. {advice} {reset}', facts({ spentUsd: '0.1' })), 'Sorry. It resets on 2026-12-01 00:00 UTC.',
    'an empty {advice} leaves no double space')
})
