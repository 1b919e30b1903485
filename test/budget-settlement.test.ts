import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createTestDb } from './support/db.js'
import { migrate } from '../src/db/migrate.js'
import { createLogger } from '../src/lib/log.js'
import { Ledger } from '../src/usage/ledger/ledger.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'

// The limit is a ceiling that may be reached, not crossed: an estimate that lands spend exactly on
// the limit is admitted, one that passes it by the smallest amount is refused. budget_reserve()
// (migration 006) decides it for every replica, so it is tested where it lives.

t.test('landing exactly on a budget is admitted; a billionth of a cent past it is refused', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  const org = 'mai_client_boundary'
  await db.sql`insert into organizations (id, name) values (${org}, 'Boundary')`
  await db.sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values
    (${org}, 'organization', '', 10, 'month'), (${org}, 'user', 'u1', 1.5, 'month')`
  const reserve = async (user: string, amount: string) => {
    const [row] = await db.sql`select refused_scope from budget_reserve(${org}, ${user}, ${randomUUID()}, ${amount}::numeric, now(), interval '5 minutes')`
    return row.refused_scope as string | null
  }
  t.equal(await reserve('u1', '1.0'), null, '1.0 of 1.5')
  t.equal(await reserve('u1', '0.5'), null, 'the rest, exactly: 1.5 of 1.5')
  t.equal(await reserve('u1', '0.00000000001'), 'user', 'past it by 1e-11 USD')
  t.equal(await reserve('u2', '8.5'), null, 'the organization: 1.5 + 8.5 = 10 of 10')
  t.equal(await reserve('u2', '0.00000000001'), 'organization', 'past the organization limit')
  const [c] = await db.sql`select sum(reserved_usd)::text as held from budget_counters where scope = 'organization'`
  t.equal(c.held, '10.0', 'the refused estimates hold nothing')
})

// A record replayed under a new event_id (its generation already written) is taken back by the
// generation-id claim; its spend must not reach the budget counters a second time.
t.test('a generation replayed under another event_id settles once', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  const org = 'mai_client_replay'
  await db.sql`insert into organizations (id, name, markup_percent) values (${org}, 'Replay', 10)`
  await db.sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values (${org}, 'organization', '', 100, 'month'), (${org}, 'default-user', '', 50, 'month')`
  const ledger = new Ledger(db.sql, null, createLogger('silent'), { batchSize: 10, flushMs: 1 })
  t.teardown(() => ledger.close())
  const rec = (generationId: string, costUsd: string): UsageRecord => ({
    eventId: randomUUID(), generationId, organizationId: org, userId: 'u1', externalUserId: `${org}_u1`,
    endpoint: 'chat/completions', model: 'm', servedModel: 'm', provider: 'p', streamed: false, status: 200, outcome: 'ok',
    finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: 1, completionTokens: 1, totalTokens: 2,
    cachedTokens: 0, reasoningTokens: 0, costUsd, upstreamCostUsd: null, isByok: false,
    markupPercent: '10', latencyMs: 1, ttfbMs: 1, chatId: null, kind: 'chat', messageId: null, createdAt: new Date().toISOString(),
  })
  ledger.record(rec('gen-replayed', '0.25'))
  t.ok(await ledger.drain(10_000))
  ledger.record(rec('gen-replayed', '0.25')) // the same generation, a new event id: a replay
  ledger.record(rec('gen-other', '0.5'))
  t.ok(await ledger.drain(10_000))
  const rows = await db.sql`select generation_id, billed_cost_usd::text as billed from usage_events order by generation_id`
  t.same(rows.map((r) => r.generation_id), ['gen-other', 'gen-replayed'], 'the replay was taken back')
  const spent = await db.sql`select scope, spent_usd = 0.825 as once, spent_usd::text as spent from budget_counters order by scope`
  t.same(spent.map((r) => [r.scope, r.once]), [['organization', true], ['user', true]], `0.275 + 0.55 billed, once each (${spent.map((r) => r.spent).join(', ')})`)
})
