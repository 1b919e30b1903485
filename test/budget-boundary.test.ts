import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createTestDb } from './support/db.js'
import { migrate } from '../src/db/migrate.js'

// The limit is a ceiling that may be reached, not crossed: an estimate that lands spend exactly on
// the limit is admitted, one that passes it by the smallest amount is refused. budget_reserve()
// (migration 006) decides it for every replica, so it is tested where it lives.

t.test('landing exactly on a budget is admitted; a billionth of a cent past it is refused', async (t) => {
  const db = await createTestDb()
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
