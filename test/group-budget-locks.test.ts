import t, { type Test } from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { createTestDb, withoutServer, type TestDb } from './support/db.js'
import { migrate } from '../src/db/migrate.js'

// The locks of group and key budgets, tested deterministically as budget-locks.test.ts does for
// the organization and the user: one transaction holds a counter while a second connection
// reserves; the second must wait and then see the first's hold. And the lock order: counters are
// locked in key order (group, key, organization, user), the order settlement's upsert takes them
// in, so an admission waiting on a group counter holds no organization counter meanwhile and
// nothing deadlocks. The test waits until Postgres reports the second one blocked (or done).

const ORG = 'mai_client_group_locks'
const WHY = 'two transactions at once, the second blocked on the first\'s lock'
let db: TestDb
const conns: Array<postgres.Sql<{}>> = []

t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, 'sql')
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Group locks')`
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

async function reset (budgets: Array<[string, string, string, string]>): Promise<void> {
  await db.sql`delete from budget_reservations`
  await db.sql`delete from budget_counters`
  await db.sql`delete from budgets`
  for (const [scope, subject, limit, period] of budgets) {
    await db.sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values (${ORG}, ${scope}, ${subject}, ${limit}::numeric, ${period})`
  }
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

type Reserved = Array<{ refused_scope: string | null, refused_subject: string | null }>
const reserve = (c: postgres.Sql<{}>, groups: string[], key: string | null, amount: string) =>
  c<Reserved>`select refused_scope, refused_subject from budget_reserve(${ORG}, 'ulla', ${groups}::text[], ${key}, ${randomUUID()}, ${amount}::numeric, now(), interval '5 minutes')`

/** First reserves in a transaction left open; second reserves meanwhile; then the first commits. */
async function race (groups: string[], key: string | null, amount: string) {
  const holder = connect()
  const other = connect()
  const [{ pid }] = await other`select pg_backend_pid() as pid`
  let commit!: () => void
  let first!: Reserved
  const held = new Promise<void>((resolve, reject) => {
    holder.begin(async (tx) => {
      first = await reserve(tx as never, groups, key, amount)
      resolve()
      await new Promise<void>((r) => { commit = r })
    }).catch(reject)
  })
  await held
  const second = reserve(other, groups, key, amount)
  const state = await blockedOrDone(pid, second)
  commit()
  const [r2] = await second
  const counters = await db.sql`select scope, user_id, reserved_usd::text as reserved from budget_counters order by scope, user_id`
  return { first: first[0], second: r2, state, counters: counters.map((c) => [c.scope, c.user_id, c.reserved]) }
}

t.test('group counter: two 0.6 reservations against 1.0, the second while the first is uncommitted', async (t) => {
  if (await withoutServer(t, WHY)) return
  await reset([['group', 'physics', '1.0', 'month'], ['group', 'art', '100', 'month']])
  const r = await race(['art', 'physics'], null, '0.6')
  t.same(r.first, { refused_scope: null, refused_subject: null }, 'the first is admitted')
  t.equal(r.state, 'blocked', 'the second waits for the first\'s lock on a group counter')
  t.same(r.second, { refused_scope: 'group', refused_subject: 'physics' }, 'and is then refused by the physics budget, named')
  t.same(r.counters, [['group', 'art', '0.6'], ['group', 'physics', '0.6']], 'only the first is held, on both groups')
})

t.test('key counter: the same race on an API key\'s budget', async (t) => {
  if (await withoutServer(t, WHY)) return
  await reset([['key', 'k1', '1.0', 'day']])
  const r = await race([], 'k1', '0.6')
  t.equal(r.state, 'blocked')
  t.same(r.second, { refused_scope: 'key', refused_subject: 'k1' })
  t.same(r.counters, [['key', 'k1', '0.6']])
})

/**
 * A transaction that has locked the group's counter (as settlement's upsert does, group before
 * organization) while an admission needing the group, the organization and the user arrives;
 * then it locks the organization's counter. In key order the admission waits at the group
 * counter holding nothing, so this succeeds; in any other order the two deadlock.
 */
async function orderRace (t: Test, admit: (c: postgres.Sql<{}>) => Promise<unknown>) {
  await reset([['organization', '', '100', 'month'], ['group', 'physics', '100', 'month'], ['user', 'ulla', '100', 'month']])
  await reserve(db.sql, ['physics'], null, '0.1') // creates the three counters of this period
  const holder = connect()
  const other = connect()
  const [{ pid }] = await other`select pg_backend_pid() as pid`
  let step!: () => void
  let outcome!: Promise<string>
  const locked = new Promise<void>((resolve, reject) => {
    outcome = holder.begin(async (tx) => {
      await tx`select 1 from budget_counters where organization_id = ${ORG} and scope = 'group' and user_id = 'physics' for update`
      resolve()
      await new Promise<void>((r) => { step = r })
      await tx`set local lock_timeout = '20s'`
      await tx`select 1 from budget_counters where organization_id = ${ORG} and scope = 'organization' for update`
      return 'locked the organization counter'
    }).catch((err: Error) => `failed: ${err.message}`)
    outcome.catch(reject)
  })
  await locked
  const admission = admit(other).then(() => 'admitted', (err: Error) => `failed: ${err.message}`)
  t.equal(await blockedOrDone(pid, admission), 'blocked', 'the admission waits for the group counter')
  step()
  t.equal(await outcome, 'locked the organization counter', 'the holder takes the organization counter: the admission did not hold it')
  t.equal(await admission, 'admitted', 'and the admission goes on once the holder commits')
}

t.test('lock order: one admission', async (t) => {
  if (await withoutServer(t, WHY)) return
  await orderRace(t, (c) => reserve(c, ['physics'], null, '0.1'))
})

t.test('lock order: a batch with group budgets locks every counter first, in key order', async (t) => {
  if (await withoutServer(t, WHY)) return
  // Items go in user order: 'anna' (no group) would take the organization's counter before
  // 'ulla' waits for the group's, unless the batch locked every counter first.
  const at = new Date().toISOString()
  const items = [
    { i: 0, org: ORG, usr: 'ulla', groups: ['physics'], key: null, ev: randomUUID(), amount: '0.1', at },
    { i: 1, org: ORG, usr: 'anna', groups: [], key: null, ev: randomUUID(), amount: '0.1', at },
  ]
  await orderRace(t, (c) => c`select * from budget_reserve_many(${items as never}::jsonb, interval '5 minutes')`)
})
