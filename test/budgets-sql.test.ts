import t, { type Test } from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { Registry } from 'prom-client'
import { createTestDb, rowsSoon, withoutServer, type TestDb } from './support/db.js'
import { migrate } from '../src/db/migrate.js'
import { Reserver } from '../src/budgets/reserver.js'
import { periodStart, resetsAt } from '../src/budgets/periods.js'
import { budgetStatus, setBudget } from '../src/budgets/store.js'
import { startDbReadings } from '../src/ops/db-readings.js'
import { registerBudgetMetrics } from '../src/ops/budget-metrics.js'

// The money SQL of sql/functions/ against the real Postgres, every session in a time zone far
// from UTC: one clock per request, overruns, estimates, the recount (exact, from the rollups,
// without locking other counters), the counters' locks, and one settlement path.

const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'sql')
const FAR = 'Pacific/Kiritimati' // UTC+14: its midnight is 10:00 UTC the day before
/** The lock tests hold a transaction open on one connection while another's statement waits. */
const LOCKS = 'one transaction holding counters while another backend\'s statement waits on them'
let db: TestDb
let sql: postgres.Sql<{}>

t.before(async () => {
  db = await createTestDb()
  await db.sql.unsafe(`alter database ${db.name} set timezone = '${FAR}'`)
  sql = postgres(db.url, { max: 6, onnotice: () => {}, connection: { TimeZone: FAR } })
  await migrate(sql, SQL_DIR)
})
t.teardown(async () => { await sql.end({ timeout: 1 }); await db.drop() })

async function org (name: string): Promise<string> {
  const id = `mai_client_${name}`
  await sql`insert into organizations (id, name) values (${id}, ${name})`
  return id
}

/** A usage row as the ledger writes it (markup 0: billed = cost). */
async function row (o: string, user: string | null, createdAt: string, cost: string | null, extra: { eventId?: string, generationId?: string | null, estimate?: string } = {}, q: postgres.Sql<{}> | postgres.TransactionSql<{}> = sql) {
  const eventId = extra.eventId ?? randomUUID()
  await q`insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, streamed, status, outcome,
                                   usage_source, cost_usd, markup_percent, created_at, kind, estimated_cost_usd)
          values (${eventId}, ${extra.generationId === undefined ? `gen-${eventId}` : extra.generationId}, ${o}, ${user}, ${`${o}_user_${user ?? ''}`},
                  'chat/completions', false, 200, ${extra.estimate ? 'interrupted' : 'ok'}, 'inline', ${cost}::numeric, 0, ${createdAt},
                  'chat', ${extra.estimate ?? null}::numeric)`
  return eventId
}

async function counter (o: string, scope: string, user: string, period: string, start: string) {
  const [c] = await sql`select spent_usd::text as spent, reserved_usd::text as reserved, overrun_usd::text as overrun from budget_counters
                        where organization_id = ${o} and scope = ${scope} and user_id = ${user} and period = ${period} and period_start = ${start}`
  return c ? { spent: Number(c.spent), reserved: Number(c.reserved), overrun: Number(c.overrun) } : null
}

/** Whether some backend waits on a lock (the statement of another test step is blocked). */
async function someoneWaits (): Promise<boolean> {
  const [r] = await db.sql`select exists (select 1 from pg_locks l join pg_stat_activity a on a.pid = l.pid
                                          where not l.granted and a.datname = ${db.name}) as w`
  return r.w
}
async function waiting (t: Test): Promise<void> {
  t.equal((await rowsSoon(async () => (await someoneWaits()) ? [1] : [], 10_000)).length, 1, 'the other statement waits on a lock')
}

/** An open transaction that holds whatever `take` locked until release() is called. */
async function holding (take: (tx: postgres.TransactionSql<{}>) => Promise<unknown>) {
  let release!: () => void
  let failed: unknown = null
  const held = new Promise<void>((resolve) => {
    const done = sql.begin(async (tx) => {
      await take(tx)
      resolve()
      await new Promise<void>((r) => { release = r })
    }).catch((err) => { failed = err; resolve() })
    void done
  })
  await held
  if (failed) throw failed
  return () => release()
}

t.test('the session time zone plays no part: periods start at UTC midnights', async (t) => {
  const [{ tz }] = await sql`select current_setting('TimeZone') as tz`
  t.equal(tz, FAR, 'this session is far from UTC')
  for (const at of ['2026-11-29T23:59:59.999Z', '2026-11-30T00:00:00Z', '2026-11-30T10:00:00Z', '2026-12-01T00:00:00Z', '2026-12-31T13:59:00Z']) {
    for (const p of ['day', 'week', 'month', 'total'] as const) {
      const [r] = await sql`select budget_period_start(${p}, ${at}::timestamptz) as s`
      t.equal(r.s.toISOString(), periodStart(p, new Date(at)).toISOString(), `${p} of ${at}`)
    }
  }
})

t.test('one clock per request: a batch across midnight, a Monday and the 1st holds and books each item in its created_at period', async (t) => {
  const o = await org('clock')
  await sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values
    (${o}, 'organization', '', 100, 'month'), (${o}, 'user', 'dana', 10, 'day'), (${o}, 'user', 'walt', 10, 'week')`
  const reserver = new Reserver<{ refused_scope: string | null, org_period_start: Date, user_period_start: Date }>(sql, 'refused_scope, org_period_start, user_period_start', 300)
  const items = [
    { user: 'dana', at: '2026-11-30T23:59:59.999Z' }, // Monday 30 November, last instant
    { user: 'dana', at: '2026-12-01T00:00:00.000Z' }, // Tuesday 1 December
    { user: 'walt', at: '2026-11-29T23:59:59.999Z' }, // Sunday
    { user: 'walt', at: '2026-11-30T00:00:00.000Z' }, // Monday: a new week
  ].map((x) => ({ ...x, eventId: randomUUID(), amount: '1' }))
  const rows = await Promise.all(items.map((x) => reserver.reserve({ org: o, user: x.user, eventId: x.eventId, amount: x.amount, at: x.at }).row))
  for (const [k, x] of items.entries()) {
    const r = rows[k]!
    t.equal(r.refused_scope, null)
    t.equal(r.org_period_start.toISOString(), periodStart('month', new Date(x.at)).toISOString(), `organization month of ${x.at}`)
    t.equal(r.user_period_start.toISOString(), periodStart(x.user === 'dana' ? 'day' : 'week', new Date(x.at)).toISOString(), `${x.user}'s period of ${x.at}`)
  }
  t.same(await counter(o, 'organization', '', 'month', '2026-11-01T00:00:00Z'), { spent: 0, reserved: 3, overrun: 0 })
  t.same(await counter(o, 'organization', '', 'month', '2026-12-01T00:00:00Z'), { spent: 0, reserved: 1, overrun: 0 })
  // the records land with the same created_at: every hold is released where it was taken
  for (const x of items) await row(o, x.user, x.at, '0.5', { eventId: x.eventId })
  const all = await sql`select period, period_start, user_id, spent_usd::float8 as s, reserved_usd::float8 as r from budget_counters
                        where organization_id = ${o} and (user_id = '' or (user_id, period) in (('dana', 'day'), ('walt', 'week')))
                          and (spent_usd > 0 or reserved_usd > 0) order by 1, 2, 3`
  t.same(all.map((c) => [c.period, c.period_start.toISOString().slice(0, 10), c.user_id, c.s, c.r]), [
    ['day', '2026-11-30', 'dana', 0.5, 0],
    ['day', '2026-12-01', 'dana', 0.5, 0],
    ['month', '2026-11-01', '', 1.5, 0],
    ['month', '2026-12-01', '', 0.5, 0],
    ['week', '2026-11-23', 'walt', 0.5, 0],
    ['week', '2026-11-30', 'walt', 0.5, 0],
  ], 'spend where it was held, nothing left held')
})

t.test('an item without its created_at is refused, not booked on some other clock', async (t) => {
  await t.rejects(sql`select * from budget_reserve_many(${[{ i: 0, org: 'x', usr: null, ev: randomUUID(), amount: 1 }] as never}::jsonb, interval '1 minute')`,
    /created_at/)
})

t.test('overruns: a cost above its reservation is counted per counter, in the budget API and in /metrics', async (t) => {
  const o = await org('overrun')
  await setBudget(sql, o, 'organization', '', '10', 'month')
  await setBudget(sql, o, 'default-user', '', '5', 'month')
  const now = new Date().toISOString()
  const hold = async (user: string, amount: string) => {
    const ev = randomUUID()
    const [r] = await sql`select refused_scope from budget_reserve(${o}, ${user}, ${ev}, ${amount}::numeric, ${now}, interval '5 minutes')`
    t.equal(r.refused_scope, null)
    return ev
  }
  await row(o, 'ovi', now, '0.7', { eventId: await hold('ovi', '0.5') }) // 0.2 over
  await row(o, 'ovi', now, '0.1', { eventId: await hold('ovi', '0.5') }) // under: nothing
  await row(o, 'una', now, '0.25', { eventId: await hold('una', '0.2') }) // 0.05 over
  await row(o, 'una', now, '3') // no reservation (served while Postgres was away): no estimate to exceed
  const start = periodStart('month', new Date(now)).toISOString()
  t.same(await counter(o, 'organization', '', 'month', start), { spent: 4.05, reserved: 0, overrun: 0.25 })
  t.same(await counter(o, 'user', 'ovi', 'month', start), { spent: 0.8, reserved: 0, overrun: 0.2 })
  const status = await budgetStatus(sql, o, new Date())
  t.same(status.map((b) => [b.scope, b.overrun_usd]), [['default-user', '0.25'], ['organization', '0.25']])
  const mine = await budgetStatus(sql, o, new Date(), 'una')
  t.equal(mine.find((b) => b.scope === 'default-user')!.overrun_usd, '0.05')
  const registry = new Registry()
  const readings = startDbReadings(() => ({ sql, org: o }), { everyMs: 3_600_000 })
  t.teardown(() => readings.stop())
  await readings.refresh()
  registerBudgetMetrics(registry, () => readings.latest())
  const text = await registry.metrics()
  t.match(text, /# TYPE usage_proxy_budget_overrun_usd_total counter/)
  t.match(text, /usage_proxy_budget_overrun_usd_total\{scope="organization"\} 0\.25/)
  t.match(text, /usage_proxy_budget_overrun_usd_total\{scope="default"\} 0\.25/)
})

t.test('an interrupted row with no cost counts at its estimate, in settlement and in the recount', async (t) => {
  const o = await org('estimate')
  await setBudget(sql, o, 'default-user', '', '5', 'month')
  const now = new Date().toISOString()
  const start = periodStart('month', new Date(now)).toISOString()
  await row(o, 'ida', now, null, { estimate: '0.3', generationId: null })
  await row(o, 'ida', now, '0.2')
  t.same(await counter(o, 'user', 'ida', 'month', start), { spent: 0.5, reserved: 0, overrun: 0 }, 'settled at the estimate')
  const [billed] = await sql`select coalesce(sum(billed_cost_usd), 0)::float8 as b from usage_events where organization_id = ${o}`
  t.equal(billed.b, 0.2, 'billing sees no cost for it')
  await sql`update budgets set limit_usd = 6 where organization_id = ${o}`
  t.same(await counter(o, 'user', 'ida', 'month', start), { spent: 0.5, reserved: 0, overrun: 0 }, 'and the recount agrees')
})

t.test('the recount: exact against the ledger, from rollups folded or not, for every period', async (t) => {
  const o = await org('recount')
  const now = new Date()
  const day = 86_400_000
  const at = (ms: number) => new Date(now.getTime() - ms).toISOString()
  // spread over this year: today, earlier this week/month, last months; some folded into the rollups
  const spots = [0, 1000, day / 2, day, 2 * day, 6 * day, 9 * day, 27 * day, 33 * day, 70 * day, 400 * day]
  let n = 0
  // In the first month a 'total' period reads, folded (below) into the daily and the monthly
  // rollups both: it counts once.
  await row(o, 'bob', '1970-01-15T12:00:00Z', '0.9')
  for (const ms of spots) {
    for (const u of ['ann', 'bob', null]) await row(o, u, at(ms), `0.0${++n}`)
    if (ms === 6 * day) await sql`select usage_rollup_compact()`
  }
  await row(o, 'ann', at(3 * day), null, { estimate: '0.5', generationId: null })
  await row(o, 'ann', at(-40 * day), '0.7') // a clock far ahead: the next period's spend, not this one's
  for (const period of ['day', 'week', 'month', 'total'] as const) {
    await setBudget(sql, o, 'organization', '', '100', period)
    await setBudget(sql, o, 'default-user', '', '100', period)
    await setBudget(sql, o, 'user', 'bob', '100', period)
    const start = periodStart(period, now)
    const end = resetsAt(period, now)?.toISOString() ?? 'infinity'
    const raw = await sql`select coalesce(user_id, '') as u, sum(coalesce(billed_cost_usd, estimated_cost_usd))::text as s from usage_events
                          where organization_id = ${o} and created_at >= ${start} and created_at < ${end}::text::timestamptz group by 1 order by 1`
    const total = await sql`select coalesce(sum(coalesce(billed_cost_usd, estimated_cost_usd)), 0)::text as s from usage_events
                            where organization_id = ${o} and created_at >= ${start} and created_at < ${end}::text::timestamptz`
    const counted = await sql`select case scope when 'organization' then '*' else user_id end as u, spent_usd::text as s from budget_counters
                              where organization_id = ${o} and period = ${period} and period_start = ${start} order by 1`
    const want = new Map(raw.filter((r) => r.u !== '').map((r) => [r.u, Number(r.s)]))
    want.set('*', Number(total[0].s))
    t.same(new Map(counted.map((c) => [c.u, Number(c.s)])), want, `${period}: every counter equals the ledger's sum`)
  }
  const [plan] = await sql`explain (format json) select * from budget_spend(${o}, ${periodStart('total', now)}, 'infinity', null)`
  t.notMatch(JSON.stringify(plan), /"Relation Name":"usage_events[^"]*","Alias":"e"[^}]*"Node Type":"Seq Scan"/, 'no sequential scan of the ledger')
})

t.test('changing a budget locks only the counters it recounts: admissions of others go on, and it does not wait for them', async (t) => {
  if (await withoutServer(t, LOCKS)) return
  const o = await org('nolock')
  await setBudget(sql, o, 'organization', '', '100', 'month')
  await setBudget(sql, o, 'user', 'ann', '10', 'month')
  await setBudget(sql, o, 'user', 'bob', '10', 'month')
  const now = new Date().toISOString()
  // an admission of bob's in flight (its counters locked): ann's budget changes all the same
  const release = await holding((tx) => tx`select * from budget_reserve(${o}, 'bob', ${randomUUID()}, 1, ${now}, interval '1 minute')`)
  await sql.begin(async (tx) => {
    await tx`set local lock_timeout = '3s'`
    await setBudget(tx as never, o, 'user', 'ann', '20', 'month')
  })
  t.pass('a user budget changed while another user\'s admission held its counters')
  release()
  // a budget change in flight: an admission of another user is not held up
  const releaseRecount = await holding((tx) => setBudget(tx as never, o, 'user', 'ann', '30', 'month'))
  const [r] = await sql.begin(async (tx) => {
    await tx`set local lock_timeout = '3s'`
    return tx`select refused_scope from budget_reserve(${o}, 'bob', ${randomUUID()}, 1, ${now}, interval '1 minute')`
  })
  t.equal(r.refused_scope, null, 'admitted while a recount was open')
  releaseRecount()
})

t.test('the recount and settlement: a row in flight is counted exactly once, whichever commits first', async (t) => {
  if (await withoutServer(t, LOCKS)) return
  const o = await org('race')
  await setBudget(sql, o, 'organization', '', '100', 'month')
  const now = new Date().toISOString()
  const start = periodStart('day', new Date(now)).toISOString()
  // 1. a ledger insert in flight when a new daily default budget is written
  const commitInsert = await holding((tx) => row(o, 'cat', now, '0.4', {}, tx))
  const write = setBudget(sql, o, 'default-user', '', '5', 'day')
  await waiting(t)
  commitInsert()
  await write
  t.same(await counter(o, 'user', 'cat', 'day', start), { spent: 0.4, reserved: 0, overrun: 0 }, 'the recount waited for the insert and read it')
  // 2. a budget write in flight when a ledger insert comes
  const commitBudget = await holding((tx) => setBudget(tx as never, o, 'user', 'dan', '5', 'week'))
  const insert = row(o, 'dan', now, '0.6')
  await waiting(t)
  commitBudget()
  await insert
  t.same(await counter(o, 'user', 'dan', 'week', periodStart('week', new Date(now)).toISOString()), { spent: 0.6, reserved: 0, overrun: 0 },
    'the insert waited for the budget and settled into it')
})

t.test('the recount locks user counters in ascending order, as batched admissions do: no deadlock', async (t) => {
  if (await withoutServer(t, LOCKS)) return
  const o = await org('order')
  await setBudget(sql, o, 'default-user', '', '100', 'month')
  const now = new Date().toISOString()
  for (const u of ['amy', 'zed']) await row(o, u, now, '0.1')
  const start = periodStart('month', new Date(now)).toISOString()
  const lock = (tx: postgres.TransactionSql<{}>, u: string) =>
    tx`select 1 from budget_counters where organization_id = ${o} and scope = 'user' and user_id = ${u} and period = 'month' and period_start = ${start} for update`
  // a batch holds amy's counter; the recount of every user waits on it; the batch then takes zed's
  let next!: () => void
  const step = new Promise<void>((r) => { next = r })
  let finish!: () => void
  const batch = sql.begin(async (tx) => {
    await tx`set local lock_timeout = '5s'`
    await lock(tx, 'amy')
    next()
    await new Promise<void>((r) => { finish = r })
    await lock(tx, 'zed')
  })
  await step
  const recount = sql`update budgets set limit_usd = 50 where organization_id = ${o}`.execute()
  await waiting(t)
  finish()
  await t.resolves(batch, 'the batch got zed\'s counter')
  await t.resolves(recount, 'and the recount finished')
})

t.test('a counter held by one admission makes the next wait, then see it: never both past the limit', async (t) => {
  if (await withoutServer(t, LOCKS)) return
  const o = await org('forupdate')
  await setBudget(sql, o, 'organization', '', '1', 'month')
  await setBudget(sql, o, 'user', 'ola', '100', 'month')
  await setBudget(sql, o, 'user', 'uma', '1', 'month')
  const now = new Date().toISOString()
  const reserve = (user: string, amount: string, q: postgres.Sql<{}> | postgres.TransactionSql<{}> = sql) =>
    q`select refused_scope from budget_reserve(${o}, ${user}, ${randomUUID()}, ${amount}::numeric, ${now}, interval '1 minute')`
  // the counters exist already (the common case): a first reservation, released
  const warm = randomUUID()
  await sql`select budget_reserve(${o}, 'uma', ${warm}, 0.01, ${now}, interval '1 minute')`
  await sql`select budget_release(${[warm]}::uuid[])`
  await setBudget(sql, o, 'organization', '', '1', 'month')
  const check = async (t: Test, first: string, second: string, scope: string) => {
    const commit = await holding((tx) => reserve(first, '0.6', tx))
    const next = reserve(second, '0.6').execute()
    await waiting(t)
    commit()
    const [r] = await next
    t.equal(r.refused_scope, scope, `the second 0.6 against 1.0 is refused by the ${scope} budget`)
  }
  await t.test('organization counter', (t) => check(t, 'ola', 'ola', 'organization'))
  await sql`delete from budget_reservations`
  await sql`update budget_counters set reserved_usd = 0 where organization_id = ${o}`
  await sql`update budgets set limit_usd = null where organization_id = ${o} and scope = 'organization'` // the user's counter alone
  await t.test('user counter', (t) => check(t, 'uma', 'uma', 'user'))
})

t.test('one settlement path: the after-insert work is one trigger, whatever it is named', async (t) => {
  const triggers = async () => (await sql`select tgname from pg_trigger where tgrelid = 'usage_events'::regclass and not tgisinternal order by 1`).map((r) => r.tgname)
  t.same(await triggers(), ['usage_events_after_insert'], 'no second after-insert trigger')
  const o = await org('names')
  await setBudget(sql, o, 'default-user', '', '100', 'month')
  const now = new Date().toISOString()
  const start = periodStart('month', new Date(now)).toISOString()
  let spent = 0
  for (const name of ['a_first', 'zz_last']) {
    await sql.unsafe(`alter trigger ${(await triggers())[0]} on usage_events rename to ${name}`)
    const gen = `gen-${name}`
    await row(o, 'rex', now, '0.25', { generationId: gen })
    await row(o, 'rex', now, '0.25', { generationId: gen }) // a replay under another event id: taken back, not counted
    spent += 0.25
    t.same(await counter(o, 'user', 'rex', 'month', start), { spent, reserved: 0, overrun: 0 }, `named ${name}: settled once`)
    const [d] = await sql`select sum(billed_cost_usd)::float8 as b from usage_rollup_deltas where organization_id = ${o}`
    t.equal(d.b, spent, `named ${name}: rolled up once`)
  }
  await migrate(sql, SQL_DIR)
  t.same(await triggers(), ['usage_events_after_insert'], 'a boot puts the one trigger back under its name, no copy')
})
