import t from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { createTestDb, withoutServer, type TestDb } from './support/db.js'
import { migrate } from '../src/db/migrate.js'
import { Reserver } from '../src/budgets/reserver.js'

// The locks that make a budget hold under concurrency, tested deterministically: one transaction
// holds a counter (it reserved and has not committed) while a second connection reserves. The
// second must wait and then see the first's hold: never are both admitted past the limit. No
// sleep decides anything: the test waits until Postgres reports the second one blocked (or done).

const ORG = 'mai_client_locks'
const WHY = 'two transactions at once, the second blocked on the first\'s lock'
let db: TestDb
const conns: Array<postgres.Sql<{}>> = []

t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Locks')`
})
t.teardown(async () => {
  for (const c of conns) await c.end({ timeout: 1 })
  await db.drop()
})

function connect (): postgres.Sql<{}> {
  const c = postgres(db.url, { max: 1, onnotice: () => {} })
  conns.push(c)
  return c
}

async function reset (): Promise<void> {
  await db.sql`delete from budget_reservations`
  await db.sql`delete from budget_counters`
  await db.sql`delete from budgets`
}

/** Resolves once `pid` waits for a lock, or `done` has settled: whichever comes first. */
async function blockedOrDone (pid: number, done: Promise<unknown>): Promise<'blocked' | 'done'> {
  let settled = false
  void done.then(() => { settled = true }, () => { settled = true })
  for (;;) {
    if (settled) return 'done'
    const [r] = await db.sql`select exists (select 1 from pg_locks where pid = ${pid} and not granted) as waiting`
    if (r.waiting) return 'blocked'
    await new Promise((r) => setTimeout(r, 5))
  }
}

interface Reserved { refused_scope: string | null }

/**
 * First reserves `amount` in a transaction left open; second reserves `amount` on its own
 * connection meanwhile; then the first commits. Returns both outcomes and what stayed reserved.
 */
async function race (user: string | null, amount: string) {
  const holder = connect()
  const other = connect()
  const [{ pid }] = await other`select pg_backend_pid() as pid`
  let commit!: () => void
  let first!: Reserved
  const held = new Promise<void>((resolve, reject) => {
    holder.begin(async (tx) => {
      ;[first] = await tx<Reserved[]>`select refused_scope from budget_reserve(${ORG}, ${user}, ${randomUUID()}, ${amount}::numeric, now(), interval '5 minutes')`
      resolve()
      await new Promise<void>((r) => { commit = r })
    }).catch(reject)
  })
  await held
  const second = other<Reserved[]>`select refused_scope from budget_reserve(${ORG}, ${user}, ${randomUUID()}, ${amount}::numeric, now(), interval '5 minutes')`
  const state = await blockedOrDone(pid, second)
  commit()
  const [r2] = await second
  const counters = await db.sql`select scope, reserved_usd::text as reserved from budget_counters order by scope`
  return { first: first.refused_scope, second: r2.refused_scope, state, counters: counters.map((c) => [c.scope, c.reserved]) }
}

t.test('organization counter: two 0.6 reservations against 1.0, the second while the first is uncommitted', async (t) => {
  if (await withoutServer(t, WHY)) return
  await reset()
  await db.sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values (${ORG}, 'organization', '', 1.0, 'month')`
  const r = await race(null, '0.6')
  t.equal(r.first, null, 'the first is admitted')
  t.equal(r.state, 'blocked', 'the second waits for the first\'s lock on the counter')
  t.equal(r.second, 'organization', 'and is then refused by the organization\'s budget')
  t.same(r.counters, [['organization', '0.6']], 'only the first is held')
})

t.test('user counter: the same race on one user\'s budget, the organization unlimited', async (t) => {
  if (await withoutServer(t, WHY)) return
  await reset()
  await db.sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values (${ORG}, 'user', 'ulla', 1.0, 'day')`
  const r = await race('ulla', '0.6')
  t.equal(r.first, null)
  t.equal(r.state, 'blocked', 'the second waits for the user\'s counter')
  t.equal(r.second, 'user', 'refused by the user\'s own budget')
  t.same(r.counters, [['user', '0.6']])
})

t.test('user counter under a default-user budget, with an organization budget that has room', async (t) => {
  if (await withoutServer(t, WHY)) return
  await reset()
  await db.sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values
    (${ORG}, 'organization', '', 100, 'month'), (${ORG}, 'default-user', '', 1.0, 'week')`
  // another user's hold on the organization counter must not hide this user's race
  await db.sql`select * from budget_reserve(${ORG}, 'someone', ${randomUUID()}, 0.5, now(), interval '5 minutes')`
  const r = await race('dora', '0.6')
  t.equal(r.first, null)
  t.equal(r.second, 'default-user', 'refused by the default user budget, not the organization')
  const [c] = await db.sql`select reserved_usd::text as r from budget_counters where scope = 'user' and user_id = 'dora'`
  t.equal(c.r, '0.6')
  const [o] = await db.sql`select reserved_usd::text as r from budget_counters where scope = 'organization'`
  t.equal(o.r, '1.1', '0.5 + 0.6 on the organization')
})

t.test('a budget written while a usage row settles counts that row exactly once', async (t) => {
  if (await withoutServer(t, WHY)) return
  await reset()
  await db.sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values (${ORG}, 'organization', '', 10, 'month'), (${ORG}, 'user', 'rita', 5, 'month')`
  await insertUsage(db.sql, 'rita', '0.25')
  const writer = connect()
  const budgetWriter = connect()
  const [{ pid }] = await budgetWriter`select pg_backend_pid() as pid`
  let commit!: () => void
  const inserted = new Promise<void>((resolve, reject) => {
    writer.begin(async (tx) => {
      await insertUsage(tx, 'rita', '0.5') // settles into the counters, not committed yet
      resolve()
      await new Promise<void>((r) => { commit = r })
    }).catch(reject)
  })
  await inserted
  // the operator changes both budgets meanwhile: each recount must not lose or double the 0.5
  const recount = budgetWriter`update budgets set limit_usd = limit_usd + 1 where organization_id = ${ORG}`
  await blockedOrDone(pid, recount)
  commit()
  await recount
  const [{ n }] = await db.sql`select count(*)::int as n from usage_events`
  t.equal(n, 2)
  const rows = await db.sql`select scope, spent_usd = (select sum(billed_cost_usd) from usage_events) as exact, spent_usd::text as spent
                              from budget_counters order by scope`
  t.same(rows.map((r) => [r.scope, r.exact]), [['organization', true], ['user', true]], `counters ${rows.map((r) => r.spent).join(', ')} = 0.75`)
})

async function insertUsage (sql: postgres.Sql<{}> | postgres.TransactionSql<{}>, user: string, cost: string, createdAt = new Date()): Promise<void> {
  await sql`insert into usage_events (event_id, organization_id, user_id, external_user_id, endpoint, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at)
            values (${randomUUID()}, ${ORG}, ${user}, ${'x-' + user}, 'chat/completions', false, 200, 'ok', 'inline', ${cost}::numeric, 0, ${createdAt})`
}

t.test('a batch\'s results reach the requests they belong to, whatever order Postgres answers in', async (t) => {
  await reset()
  // budget_reserve_many handles items sorted by user: zed's row comes back after amy's
  await db.sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values
    (${ORG}, 'user', 'zed', 0, 'month'), (${ORG}, 'user', 'amy', 1, 'month'), (${ORG}, 'user', 'max', 1, 'month')`
  const reserver = new Reserver<{ refused_scope: string | null, lim: string }>(db.sql, 'refused_scope, user_limit::text as lim', 60)
  const items = [
    { org: ORG, user: 'zed', eventId: randomUUID(), amount: '0.1', at: new Date().toISOString() }, // refused: $0 budget
    { org: ORG, user: 'nobody', eventId: randomUUID(), amount: '0.1', at: new Date().toISOString() }, // no budget applies: no row
    { org: ORG, user: 'max', eventId: randomUUID(), amount: '2', at: new Date().toISOString() }, // refused: more than max's $1
    { org: ORG, user: 'amy', eventId: randomUUID(), amount: '0.1', at: new Date().toISOString() }, // admitted
  ]
  const rows = await Promise.all(items.map((i) => reserver.reserve(i).row)) // one turn: one batch
  t.same(rows.map((r) => r && [r.refused_scope, r.lim]), [['user', '0'], undefined, ['user', '1'], [null, '1']])
  const held = await db.sql`select event_id, amount_usd::text as a from budget_reservations`
  t.same(held.map((r) => [r.event_id, r.a]), [[items[3].eventId, '0.1']], 'only amy\'s request holds anything')
})
