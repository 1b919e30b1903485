import t from 'tap'
import { createServer, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { request } from 'undici'
import postgres from 'postgres'
import { createTestDb, rowsSoon, withoutServer, type TestDb } from './support/db.js'
import { LogSink } from './support/log-sink.js'
import { createLogger } from '../src/lib/log.js'
import { loadConfig } from '../src/config/config.js'
import { migrate } from '../src/db/migrate.js'
import { upsertOrganization } from '../src/db/organizations.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'
import { Limits, type Admission } from '../src/budgets/limits.js'
import { PriceList } from '../src/budgets/prices.js'
import { Reserver } from '../src/budgets/reserver.js'
import { setBudget } from '../src/budgets/store.js'
import { TcpRelay } from './support/tcp-relay.js'
import { Allowlists } from '../src/budgets/allowlists.js'

// Reservations leave nothing behind and live ones stay: a fail-closed timeout (the query is
// cancelled, or what it reserved released once it commits), and holds renewed while a request
// runs longer than their TTL, which the sweeper then leaves alone.

const ORG = 'mai_client_holds'
const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'sql')
const config = loadConfig({ OPENROUTER_API_KEY: 'sk-or-v1-test-key-0123456789', OPENROUTER_EXTERNAL_USER: ORG, ORGANIZATION_NAME: 'Holds', BUDGET_REFRESH_MS: '60000' }).limits
const log = createLogger('silent', new LogSink())
let db: TestDb
/** Lock holders and observers, on connections of their own (the code under test uses db.sql's two). */
let aux: postgres.Sql<{}>
let server: Server
let url: string
let handler: (res: ServerResponse) => void = (res) => res.end()

const prices = new PriceList(async () => ({
  status: 200,
  body: JSON.stringify({ data: [{ id: 'm/priced', pricing: { prompt: '0.000001', completion: '0.000002', request: '0.0001' } }] }),
}), '60', log)

t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, SQL_DIR)
  aux = postgres(db.url, { max: 4, onnotice: () => {} })
  await upsertOrganization(db.sql, { id: ORG, name: 'Holds', markupPercent: '0' }, 'sk-or-v1-test-key-0123456789')
  await prices.start()
  server = createServer((_req, res) => handler(res))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
t.teardown(async () => {
  prices.stop()
  server.close()
  await aux.end({ timeout: 1 })
  await db.drop()
})

function rec (user: string): UsageRecord {
  return {
    eventId: randomUUID(), generationId: null, organizationId: ORG, userId: user, externalUserId: `x-${user}`, endpoint: 'chat/completions',
    model: 'm/priced', servedModel: null, provider: null, streamed: false, status: 200, outcome: 'ok', finishReason: null, errorMessage: null,
    usageSource: 'none', promptTokens: null, completionTokens: null, totalTokens: null, cachedTokens: null, reasoningTokens: null,
    costUsd: null, upstreamCostUsd: null, isByok: null, markupPercent: '0', latencyMs: null, ttfbMs: null, chatId: null, kind: 'api', messageId: null,
    createdAt: new Date().toISOString(),
  }
}

function makeLimits (extra: Partial<typeof config> = {}): Limits {
  const limits = new Limits({ sql: db.sql, record: () => {}, log, config: { ...config, ...extra }, organizationId: ORG, markupPercent: '0', prices, alerts: null })
  t.teardown(() => limits.close())
  return limits
}

async function admit (limits: Limits, r: UsageRecord) {
  let admission: Admission | null | undefined
  handler = (res) => {
    if (!limits.needsAdmission(r)) { admission = undefined; res.end('direct'); return }
    void limits.admit(res, r, Buffer.alloc(400, 0x61), 100).then((a) => { admission = a; if (a) res.end('admitted') })
  }
  const res = await request(url)
  return { status: res.statusCode, text: await res.body.text(), admission }
}

/** A transaction holding `user`'s counters until the returned function is called. */
async function lockCounters (user: string): Promise<() => void> {
  let release!: () => void
  await new Promise<void>((resolve) => {
    void aux.begin(async (tx: postgres.TransactionSql<{}>) => {
      await tx`select 1 from budget_counters where user_id = ${user} for update`
      resolve()
      await new Promise<void>((r) => { release = r })
    })
  })
  return () => release()
}

const lockWaiters = async () => (await aux`select count(*)::int as n from pg_locks l join pg_stat_activity a on a.pid = l.pid
                                              where not l.granted and a.datname = ${db.name}`)[0].n as number
const held = async (user: string) => (await aux`select coalesce(sum(reserved_usd), 0)::float8 as r from budget_counters where user_id = ${user}`)[0].r as number
const reservation = async (eventId: string) => (await aux`select 1 from budget_reservations where event_id = ${eventId}`).length

t.test('BUDGET_FAIL_MODE=closed: a timed-out admission answers 503 and its query is cancelled, holding nothing', async (t) => {
  if (await withoutServer(t, 'a reservation query waiting on another backend\'s lock, then cancelled on the server')) return
  await setBudget(db.sql, ORG, 'user', 'tim', '1', 'total')
  const warm = makeLimits()
  await warm.refresh()
  const first = await admit(warm, rec('tim')) // the counter exists, so it can be held
  first.admission!.done()
  await db.sql`delete from budget_reservations`
  await db.sql`update budget_counters set reserved_usd = 0`
  const limits = makeLimits({ failMode: 'closed', dbTimeoutMs: 300 })
  await limits.refresh()
  const unlock = await lockCounters('tim')
  const r = rec('tim')
  const res = await admit(limits, r)
  t.equal(res.status, 503, 'fail closed')
  const cancelled = await rowsSoon(async () => (await lockWaiters()) === 0 ? [1] : [])
  t.equal(cancelled.length, 1, 'nothing waits on the lock any more: the reservation query was cancelled')
  unlock()
  t.equal(await reservation(r.eventId), 0, 'no reservation')
  t.equal(await held('tim'), 0, 'nothing held')
})

t.test('a batch where one admission gave up: its hold is released once the batch commits, the others keep theirs', async (t) => {
  if (await withoutServer(t, 'a batch of reservations waiting on another backend\'s lock')) return
  await setBudget(db.sql, ORG, 'user', 'ava', '1', 'total')
  await setBudget(db.sql, ORG, 'user', 'ben', '1', 'total')
  const reserver = new Reserver<{ refused_scope: string | null }>(db.sql, 'refused_scope', 300)
  const now = new Date().toISOString()
  const warm = [reserver.reserve({ org: ORG, user: 'ava', eventId: randomUUID(), amount: '0', at: now }), reserver.reserve({ org: ORG, user: 'ben', eventId: randomUUID(), amount: '0', at: now })]
  await Promise.all(warm.map((w) => w.row))
  const unlock = await lockCounters('ava')
  const a = { org: ORG, user: 'ava', eventId: randomUUID(), amount: '0.25', at: now }
  const b = { org: ORG, user: 'ben', eventId: randomUUID(), amount: '0.25', at: now }
  const pa = reserver.reserve(a)
  const pb = reserver.reserve(b) // same turn: same batch
  const blocked = await rowsSoon(async () => (await lockWaiters()) > 0 ? [1] : [])
  t.equal(blocked.length, 1, 'the batch waits on ava\'s counter')
  pa.abandon()
  await t.rejects(pa.row, /abandoned/)
  t.ok(await lockWaiters() > 0, 'ben still waits: the batch is not cancelled for him')
  unlock()
  const rb = await pb.row
  t.equal(rb?.refused_scope, null, 'ben admitted')
  const released = await rowsSoon(async () => (await reservation(a.eventId)) === 0 && (await held('ava')) === 0 ? [1] : [])
  t.equal(released.length, 1, 'ava\'s late hold released')
  t.equal(await reservation(b.eventId), 1, 'ben\'s hold stays')
  t.equal(await held('ben'), 0.25)
})

t.test('a batch chosen as a deadlock victim runs again: its admissions are decided, not failed', async (t) => {
  if (await withoutServer(t, 'a batch of reservations and another backend locking in the opposite order')) return
  await setBudget(db.sql, ORG, 'organization', '', '100', 'total')
  await setBudget(db.sql, ORG, 'user', 'dee', '1', 'total')
  const reserver = new Reserver<{ refused_scope: string | null }>(db.sql, 'refused_scope', 300)
  const now = new Date().toISOString()
  await reserver.reserve({ org: ORG, user: 'dee', eventId: randomUUID(), amount: '0', at: now }).row // both counters exist
  // Another backend takes dee's counter, then, once the batch holds the organization's and waits
  // for dee's, asks for the organization's: a cycle. Its own deadlock_timeout is long, so the
  // batch's check (1 s, the default) finds it first and the batch is the one rolled back.
  let release!: () => void
  let taken!: () => void
  const tookUser = new Promise<void>((r) => { taken = r })
  let crossed: 'took the organization counter' | string = ''
  const other = aux.begin(async (tx: postgres.TransactionSql<{}>) => {
    await tx`set local deadlock_timeout = '60s'`
    await tx`select 1 from budget_counters where scope = 'user' and user_id = 'dee' for update`
    taken()
    await new Promise<void>((r) => { release = r })
    await tx`select 1 from budget_counters where scope = 'organization' for update`
    crossed = 'took the organization counter'
  }).catch((err: { code?: string }) => { crossed = `failed: ${err.code}` })
  await tookUser
  const item = { org: ORG, user: 'dee', eventId: randomUUID(), amount: '0.25', at: now }
  const pending = reserver.reserve(item)
  const waiting = await rowsSoon(async () => (await lockWaiters()) > 0 ? [1] : [])
  t.equal(waiting.length, 1, 'the batch waits on dee\'s counter')
  release()
  await other
  t.equal(crossed, 'took the organization counter', 'the other backend got through: the batch was the deadlock victim')
  const row = await pending.row
  t.equal(row?.refused_scope, null, 'the batch ran again and admitted the request')
  t.equal(await reservation(item.eventId), 1, 'its hold is in place')
  t.equal(await held('dee'), 0.25)
})

t.test('a request running longer than the TTL keeps its hold: renewed, and never swept while live', async (t) => {
  await setBudget(db.sql, ORG, 'user', 'liv', '1', 'total')
  const limits = makeLimits({ reservationTtlMs: 1500 })
  await limits.refresh()
  const r = rec('liv')
  const res = await admit(limits, r)
  t.equal(res.status, 200)
  const [{ e: first }] = await db.sql`select expires_at as e from budget_reservations where event_id = ${r.eventId}`
  // the first TTL runs out while the request still runs
  await rowsSoon(async () => (await db.sql`select 1 where now() > ${first}::timestamptz + interval '200 milliseconds'`), 15_000)
  const [{ e: later }] = await db.sql`select expires_at as e from budget_reservations where event_id = ${r.eventId}`
  t.ok(later > first, 'the hold was renewed')
  t.equal(await limits.sweep(), 0, 'the sweeper released nothing')
  // even when a renewal is late (its expiry already passed), this sidecar's sweeper spares it
  await db.sql`update budget_reservations set expires_at = now() - interval '1 second' where event_id = ${r.eventId}`
  t.equal(await limits.sweep(), 0, 'a live hold is never swept')
  t.equal(await reservation(r.eventId), 1)
  const [{ a }] = await db.sql`select amount_usd::float8 as a from budget_reservations where event_id = ${r.eventId}`
  t.equal(await held('liv'), a, 'the whole estimate is still held')
  res.admission!.done()
  // A renewal already on its way when the request ended may still land: wait for it, then let the
  // hold expire as a crashed record would.
  await limits.renew()
  await db.sql`update budget_reservations set expires_at = now() - interval '1 second' where event_id = ${r.eventId}`
  t.equal(await limits.sweep(), 1, 'once the request ended, an expired hold is released')
  t.equal(await held('liv'), 0)
})

t.test('a budget written here binds at once: admissions ask from the write on, and a re-read begun before it cannot undo that', async (t) => {
  const org = 'mai_client_first_budget'
  await upsertOrganization(db.sql, { id: org, name: 'First budget', markupPercent: '0' }, 'sk-or-v1-test-key-0123456789')
  // The real pool, with one answer held back when asked: a periodic re-read that read "no budget"
  // before the write and comes back after it.
  let hold: { read: () => void, release: Promise<void> } | null = null
  const sql = new Proxy(db.sql, {
    apply (target, thisArg, args) {
      const q = Reflect.apply(target, thisArg, args) as Promise<unknown>
      const h = hold
      hold = null
      return h ? q.then(async (r) => { h.read(); await h.release; return r }) : q
    },
  })
  const limits = new Limits({ sql, record: () => {}, log, config, organizationId: org, markupPercent: '0', prices, alerts: null })
  t.teardown(() => limits.close())
  await limits.refresh()
  t.notOk(limits.mayHaveBudgets, 'no budget: nothing to ask')
  t.notOk(limits.needsAdmission(rec('first')), 'and requests go on without an admission')

  let read!: () => void
  let release!: () => void
  const wasRead = new Promise<void>((r) => { read = r })
  hold = { read, release: new Promise<void>((r) => { release = r }) }
  const stale = limits.refresh()
  await wasRead
  await setBudget(db.sql, org, 'user', 'first', '1', 'month')
  const fresh = limits.changed()
  t.ok(limits.mayHaveBudgets, 'from the write on, the views ask')
  t.ok(limits.needsAdmission(rec('first')), 'and so does the admission, before any re-read answered')
  await fresh
  release()
  await stale
  t.ok(limits.mayHaveBudgets, 'the re-read that began before the write does not undo it')
  t.ok(limits.needsAdmission(rec('first')))
})

t.test('a batch every admission gave up on is cancelled; a cancel request Postgres cannot be reached for leaves no rejection unheard', async (t) => {
  if (await withoutServer(t, 'a batch of reservations waiting on another backend\'s lock')) return
  await setBudget(db.sql, ORG, 'user', 'cy', '1', 'total')
  const relay = new TcpRelay(5432)
  await relay.open()
  const viaRelay = postgres(`${relay.url}/${db.name}`, { max: 1, onnotice: () => {} })
  t.teardown(async () => { await viaRelay.end({ timeout: 1 }); await relay.cut() })
  const reserver = new Reserver<{ refused_scope: string | null }>(viaRelay, 'refused_scope', 300)
  const now = new Date().toISOString()
  await reserver.reserve({ org: ORG, user: 'cy', eventId: randomUUID(), amount: '0', at: now }).row
  const dropped: unknown[] = []
  const onDropped = (err: unknown): void => { dropped.push(err) }
  process.on('unhandledRejection', onDropped)
  t.teardown(() => { process.off('unhandledRejection', onDropped) })
  const unlock = await lockCounters('cy')
  const p = reserver.reserve({ org: ORG, user: 'cy', eventId: randomUUID(), amount: '0.25', at: now })
  const blocked = await rowsSoon(async () => (await lockWaiters()) > 0 ? [1] : [])
  t.equal(blocked.length, 1, 'the batch waits on cy\'s counter')
  // The batch's connection stays; the cancel request needs a new one, which is refused.
  relay.refuseNew()
  p.abandon()
  await t.rejects(p.row, /abandoned/)
  unlock()
  // The batch ends (the cancel never arrived), long after the refusal came back.
  await rowsSoon(async () => (await lockWaiters()) === 0 ? [1] : [])
  await viaRelay`select 1`
  await new Promise((r) => setImmediate(r))
  t.same(dropped.map(String), [], 'the refused cancel request was heard')
})

/**
 * The ticks of a re-read timer (Limits', Allowlists'): each tick reads the object's `periodic`
 * slot, the re-read still out, once, to start another only when there is none.
 */
function ticksOf (o: object): () => number {
  let n = 0
  let value: unknown = (o as { periodic?: unknown }).periodic
  Object.defineProperty(o, 'periodic', { configurable: true, get () { n++; return value }, set (v: unknown) { value = v } })
  return () => n
}

t.test('a database slower than the re-read interval never piles re-reads up: one at a time, for budgets and allowlists', async (t) => {
  // The real pool, every answer held back until released: each re-read takes "forever".
  let asked = 0
  let release!: () => void
  const released = new Promise<void>((r) => { release = r })
  const sql = new Proxy(db.sql, {
    apply (target, thisArg, args) {
      if (/\S/.test(String((args[0] as string[])[0]))) asked++ // not the empty fragments a query nests
      return (Reflect.apply(target, thisArg, args) as Promise<unknown>).then(async (r) => { await released; return r }, async (err) => { await released; throw err })
    },
  })
  const limits = new Limits({ sql, record: () => {}, log, config: { ...config, refreshMs: 5 }, organizationId: ORG, markupPercent: '0', prices, alerts: null })
  const allowlists = new Allowlists(sql, ORG, 5, log)
  t.teardown(() => { limits.close(); allowlists.close() })
  const ticks = [ticksOf(limits), ticksOf(allowlists)]
  // Forty intervals pass, counted, however slow the machine: each timer finds its re-read still
  // out and starts no other. A timer that starts one anyway has asked more than 4 long before.
  for (const deadline = Date.now() + 30_000; ticks.some((n) => n() < 40) && asked <= 4;) {
    if (Date.now() > deadline) throw new Error(`the timers ticked ${ticks.map((n) => n()).join(' and ')} times in 30 s`)
    await new Promise((r) => setTimeout(r, 5))
  }
  t.ok(asked <= 4, `${asked} reads asked in ${ticks.map((n) => n()).join(' and ')} ticks: each one's first, and one periodic re-read each`)
  release()
})
