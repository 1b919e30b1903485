import t, { type Test } from 'tap'
import postgres from 'postgres'
import { Agent, request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { pgbouncerBinary, startPgbouncer, type Bouncer } from './support/pgbouncer.js'
import { isDroppedSocketRejection, isPostgresSocketRace } from '../src/lib/crash-guard.js'

// A fleet through one PgBouncer: sidecars of distinct organizations whose only DATABASE_URL is
// the pooler, 16 requests at a time each. Every generation the fake OpenRouter billed has its
// row; small organization budgets bind; no admission fails open; /metrics answers from every
// sidecar while Postgres is held (a table lock that stalls every insert). Then in session mode,
// and with the pooler killed and started again mid-run.

const ORGS = 10
// Enough for a budget organization to fill its limit (10 generations) and be refused more, and
// for the load to outlast the step a test takes once a quarter of it has finished.
const PER_ORG = 32
const AT_ONCE = 16
/** Every completed generation costs this (billed × 1.125), just under its estimate: the bound is the limit. */
const COST = '0.0004'
const BUDGET_ORGS = new Set([0, 1, 2])
const ORG_LIMIT = '0.004'

// Ten sidecars in one process: each adds its journal's exit hook.
process.setMaxListeners(50)

const bin = pgbouncerBinary()
const skip = 'missing' in bin ? bin.missing : false

/** a <= b for decimal strings, exactly. */
function le (a: string, b: string): boolean {
  const units = (v: string) => { const [i, f = ''] = v.split('.'); return BigInt(i + f.padEnd(40, '0').slice(0, 40)) }
  return units(a) <= units(b)
}

interface Fleet { fake: FakeOpenRouter, db: TestDb, bouncer: Bouncer, sidecars: Started[], agent: Agent }

const file = t

/**
 * The transaction-mode fleet the first test leaves, once its checks passed, to the pooler-restart
 * test: ten sidecars, a database, a pooler and a fake are a second or more of CPU to start, and
 * that test is about the pooler going away under sidecars that run, not about fresh ones. Run
 * alone (or after a failure) it starts its own.
 */
let leftFleet: Fleet | null = null

/**
 * `migrated`: the database starts from the migrated template. The first fleet keeps the empty
 * database, its ten sidecars racing to migrate through the pooler; the others are about the
 * pooler's mode and restart, and skip that work (the migrations ran, and were found applied).
 * `owner`: the test whose end stops the fleet (the file, for one a later test goes on with).
 */
async function startFleet (t: Test, mode: 'transaction' | 'session', migrated = false, owner: Test = t): Promise<Fleet | null> {
  const db = await createTestDb({ migrated })
  if (db.embedded) { await db.drop(); t.plan(0, 'PgBouncer needs a real Postgres server (none on 127.0.0.1:5432)'); return null }
  const fake = await new FakeOpenRouter(27).start()
  fake.fixedCost = COST
  fake.slowEventMs = 5
  fake.generationDelayMs = 0
  // Session mode gives each client connection a backend for its life: the pool must hold them all.
  const bouncer = await startPgbouncer({ postgresPort: db.port, mode, poolSize: mode === 'session' ? ORGS * 4 + 4 : 8 })
  const agent = new Agent({ connections: ORGS * AT_ONCE })
  const sidecars: Started[] = []
  owner.teardown(async () => {
    await Promise.all(sidecars.map((s) => s.sidecar.stop('test over')))
    await agent.close()
    await bouncer.kill()
    await fake.close()
    await db.drop()
  })
  sidecars.push(...await Promise.all(Array.from({ length: ORGS }, (_, i) => startSidecar(baseEnv(fake, bouncer.url(db.name), {
    OPENROUTER_EXTERNAL_USER: `fleet_org_${i}`,
    ORGANIZATION_NAME: `Fleet ${i}`,
    LOG_LEVEL: 'info',
    ACCESS_LOG: 'off',
    DATABASE_POOL_MAX: '3',
    // A lock held for seconds must not count as the pooler being away.
    BUDGET_DB_TIMEOUT_MS: '10000',
    ...(BUDGET_ORGS.has(i) ? { ORG_BUDGET_USD: ORG_LIMIT, ORG_BUDGET_PERIOD: 'month' } : {}),
  })))))
  return { fake, db, bouncer, sidecars, agent }
}

/**
 * PER_ORG requests per sidecar, AT_ONCE at a time each, all sidecars together; statuses by org.
 * `during` runs alongside, and `quarter` resolves once a quarter of the requests have finished:
 * a step taken then is mid-run, however fast or slow the machine.
 */
async function load (f: Fleet, during?: (quarter: Promise<void>) => Promise<void>): Promise<Array<Map<number, number>>> {
  const statuses = f.sidecars.map(() => new Map<number, number>())
  let finished = 0
  let reached!: () => void
  const quarter = new Promise<void>((r) => { reached = r })
  const run = f.sidecars.map(async (s, org) => {
    let next = 0
    await Promise.all(Array.from({ length: AT_ONCE }, async () => {
      while (next < PER_ORG) {
        const i = next++
        const res = await request(s.url + '/v1/chat/completions', {
          dispatcher: f.agent,
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-openwebui-user-id': `o${org}u${i % 3}` },
          body: JSON.stringify({ model: 'fake/ok', stream: i % 2 === 0, max_tokens: 200, messages: [{ role: 'user', content: `request ${i}` }] }),
        })
        await res.body.text()
        statuses[org].set(res.statusCode, (statuses[org].get(res.statusCode) ?? 0) + 1)
        if (++finished === Math.floor(f.sidecars.length * PER_ORG / 4)) reached()
      }
    }))
  })
  await Promise.all([...run, during?.(quarter)])
  return statuses
}

/** Waits (within the test's own timeout) until every billed generation has its row. */
async function rowsForEveryGeneration (f: Fleet): Promise<string[]> {
  for (;;) {
    const rows = await f.db.sql<{ generation_id: string }[]>`select generation_id from usage_events where generation_id is not null`
    if (rows.length >= f.fake.generations.size) return rows.map((r) => r.generation_id).sort()
    await new Promise((r) => setTimeout(r, 100))
  }
}

async function metricsText (s: Started): Promise<string> {
  const res = await request(s.url + '/metrics')
  const text = await res.body.text()
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}: ${text}`)
  return text
}

function assertFleet (t: Test, f: Fleet, statuses: Array<Map<number, number>>, rows: string[]): void {
  t.same(rows, [...f.fake.generations.keys()].sort(), 'one row for every generation OpenRouter billed, no more')
  for (const [org, st] of statuses.entries()) {
    const other = [...st.keys()].filter((c) => c !== 200 && c !== 402)
    t.same(other, [], `org ${org}: every answer is 200 or a budget's 402`)
    if (BUDGET_ORGS.has(org)) t.ok((st.get(402) ?? 0) > 0, `org ${org}: its budget refused requests`)
    else t.equal(st.get(200), PER_ORG, `org ${org}: no budget, all served`)
  }
  for (const s of f.sidecars) {
    t.notMatch(s.logs.text, /postgres unavailable for the admission|fail(ed|s)? open/i, `${s.sidecar.config.organization.id}: no admission failed open`)
    t.notMatch(s.logs.text, /prepared statement|does not exist/, `${s.sidecar.config.organization.id}: no statement lost between backends`)
  }
}

async function assertBudgetsBind (t: Test, f: Fleet): Promise<void> {
  for (const org of BUDGET_ORGS) {
    const [{ billed }] = await f.db.sql<{ billed: string }[]>`select coalesce(sum(billed_cost_usd), 0)::text as billed from usage_events where organization_id = ${`fleet_org_${org}`}`
    // No generation costs more than its estimate here, so the overruns are 0 and the bound is the limit.
    t.ok(le(billed, ORG_LIMIT), `org ${org}: billed ${billed} <= limit ${ORG_LIMIT}`)
    t.ok(le(sumDecimals([ORG_LIMIT, '-0.0005']), billed), `org ${org}: the budget filled (${billed}), so it was the limit that refused`)
  }
}

t.test('transaction mode: 10 sidecars at 16 at a time, rows equal generations, budgets bind, /metrics answers while Postgres is held', { skip }, async (t) => {
  const f = await startFleet(t, 'transaction', false, file)
  if (!f) return
  const lock = postgres(f.db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => lock.end({ timeout: 1 }))
  let heldScrapes = 0
  const statuses = await load(f, async (quarter) => {
    // Mid-run: every insert waits on a lock for 3 s; meanwhile every sidecar's /metrics answers.
    await quarter
    await lock.begin(async (tx) => {
      await tx`lock table usage_events in access exclusive mode`
      const texts = await Promise.all(f.sidecars.map(metricsText))
      heldScrapes = texts.filter((x) => /^usage_proxy_ledger_backlog_records \d+/m.test(x)).length
      await new Promise((r) => setTimeout(r, 3000))
    })
  })
  t.equal(heldScrapes, ORGS, 'every sidecar answered /metrics, with its backlog, while inserts were held')
  const rows = await rowsForEveryGeneration(f)
  assertFleet(t, f, statuses, rows)
  await assertBudgetsBind(t, f)
  const [{ n }] = await f.db.sql<{ n: number }[]>`select count(distinct organization_id)::int as n from usage_events`
  t.equal(n, ORGS, 'every organization has its rows')
  const after = await metricsText(f.sidecars[3])
  t.match(after, /^usage_proxy_ledger_backlog_records 0$/m, 'drained: nothing waits')
  // postgres_up is the last background probe's (every 5 s): one that ran while the pooler's
  // backends were all held may still read 0. Scrape until a later probe answered.
  let up = after
  for (const until = Date.now() + 20_000; !/^usage_proxy_postgres_up 1$/m.test(up) && Date.now() < until;) {
    await new Promise((r) => setTimeout(r, 250))
    up = await metricsText(f.sidecars[3])
  }
  t.match(up, /^usage_proxy_postgres_up 1$/m, 'a probe after the hold found Postgres up')
  if (t.passing()) leftFleet = f
})

t.test('session mode works too', { skip }, async (t) => {
  const f = await startFleet(t, 'session', true)
  if (!f) return
  const statuses = await load(f)
  assertFleet(t, f, statuses, await rowsForEveryGeneration(f))
  await assertBudgetsBind(t, f)
})

t.test('the pooler restarts mid-run: every generation still gets its row once it is back, without a sidecar restart', { skip }, async (t) => {
  // The sidecars run in this process, so it needs the guard their own process installs
  // (src/lib/crash-guard.ts): postgres.js can throw from a timer when the pooler drops a
  // connection mid-write. Anything else still fails the file.
  const survive = (err: Error, origin: string): void => {
    if (isPostgresSocketRace(err) || isDroppedSocketRejection(err, origin)) return
    throw err
  }
  process.on('uncaughtException', survive)
  t.teardown(() => { process.off('uncaughtException', survive) })
  const f = leftFleet ?? await startFleet(t, 'transaction', true)
  leftFleet = null
  if (!f) return
  // Rows of a fleet that served a test before: counted apart, per organization.
  const earlier = await f.db.sql<{ org: string, n: number }[]>`select organization_id as org, count(*)::int as n from usage_events where status = 200 group by 1`
  const servedBefore = (org: number) => earlier.find((r) => r.org === `fleet_org_${org}`)?.n ?? 0
  const statuses = await load(f, async (quarter) => {
    await quarter
    await f.bouncer.kill()
    // While it is away: /metrics and /healthz answer, and the backlog shows.
    const down = await Promise.all(f.sidecars.map(async (s) => (await request(s.url + '/healthz')).statusCode))
    t.same(down, f.sidecars.map(() => 200), '/healthz answers with the pooler gone')
    await new Promise((r) => setTimeout(r, 1500))
    await f.bouncer.start()
  })
  const rows = await rowsForEveryGeneration(f)
  t.same(rows, [...f.fake.generations.keys()].sort(), 'one row for every generation OpenRouter billed')
  for (const [org, st] of statuses.entries()) {
    // With the pooler gone an admission cannot reach Postgres: refused (fail-closed is not the
    // default) or admitted open, but never a request lost; what was served has its row.
    const served = st.get(200) ?? 0
    const [{ n }] = await f.db.sql<{ n: number }[]>`select count(*)::int as n from usage_events where organization_id = ${`fleet_org_${org}`} and status = 200`
    t.equal(n - servedBefore(org), served, `org ${org}: a row for every answer served`)
  }
  const [{ waiting }] = await Promise.all([metricsText(f.sidecars[0]).then((x) => ({ waiting: /^usage_proxy_ledger_backlog_records (\d+)$/m.exec(x)?.[1] }))])
  t.equal(waiting, '0', 'the backlog drained without a restart')
})
