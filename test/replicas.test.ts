import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, withoutServer } from './support/db.js'
import { TEST_KEY } from './support/test-key.js'
import { freePort, spawnSidecar, type Child } from './support/child.js'
import { runLoad, type LoadResult } from './support/load.js'
import { verifyRollups } from '../src/usage/reports/verify.js'

// Five sidecar processes on one Postgres, booted at the same moment: three replicas of one
// organization (each its own DATA_DIR) and two other organizations, all writing at once. One
// replica is SIGKILLed mid-load and restarted on its DATA_DIR. 120 requests each, 6 at a time,
// all five starting together: many small batches (LEDGER_FLUSH_MS 5) from five writers at once
// on the same organizations, users, days and partitions, which is what concurrency needs here;
// more requests repeat the same overlap at about 8 ms of CPU each (client, fake and sidecar).

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(11).start() })
t.teardown(async () => { await fake.close() })

interface Replica { org: string, dataDir: string, port: number, child: Child, name: string }

t.test('3 replicas of one organization + 2 others: no deadlock, none lost or doubled, migrations and maintenance once', async (t) => {
  // The embedded database serves one session at a time: five processes there take turns instead
  // of racing, and one run of CI without a server saw a request wait there past 300 s.
  if (await withoutServer(t, 'five processes writing concurrently, each with its own sessions')) return
  const db = await createTestDb()
  t.teardown(() => db.drop())
  const env = (org: string, dataDir: string) => ({
    OPENROUTER_API_KEY: TEST_KEY,
    OPENROUTER_EXTERNAL_USER: org,
    ORGANIZATION_NAME: org,
    DATABASE_URL: db.url,
    OPENROUTER_BASE_URL: fake.baseUrl,
    MARKUP_PERCENT: org.endsWith('_a') ? '15' : '2.5',
    LOG_LEVEL: 'info',
    LEDGER_FLUSH_MS: '5',
    LEDGER_BATCH_SIZE: '50',
    RECONCILE_MAX_WAIT_MS: '15000',
    DATA_DIR: dataDir,
  })
  const orgs = ['mai_client_rep_a', 'mai_client_rep_a', 'mai_client_rep_a', 'mai_client_rep_b', 'mai_client_rep_c']
  const replicas: Replica[] = []
  for (const [i, org] of orgs.entries()) {
    const dataDir = mkdtempSync(join(tmpdir(), `replica-${i}-`))
    const port = await freePort()
    replicas.push({ org, dataDir, port, name: `${org}#${i}`, child: spawnSidecar(env(org, dataDir), port) })
  }
  const allLogs: Array<Array<Record<string, any>>> = []
  t.teardown(async () => { for (const r of replicas) { r.child.proc.kill('SIGKILL'); await r.child.exited } })
  await Promise.all(replicas.map((r) => r.child.waitReady()))

  const seen = new Map<string, string>() // generation -> organization
  const keep = (org: string, l: LoadResult) => { for (const g of l.seen) seen.set(g, org) }
  const victim = replicas[1]
  let killed = false
  const loads = replicas.map(async (r, i) => {
    const l = await runLoad({
      url: () => r.child.url,
      total: 120,
      concurrency: 6,
      headers: { 'x-openwebui-user-id': `user-${i % 2}` },
      after: (done) => { if (r === victim && done === 50 && !killed) { killed = true; r.child.proc.kill('SIGKILL') } },
    })
    keep(r.org, l)
    return l
  })
  const results = await Promise.all(loads)
  t.ok(killed, 'one replica was killed mid-load')
  for (const [i, l] of results.entries()) if (replicas[i] !== victim) t.equal(l.failed, 0, `${replicas[i].name}: no failed request`)
  await victim.child.exited
  allLogs.push(victim.child.logs())
  victim.child = spawnSidecar(env(victim.org, victim.dataDir), victim.port)
  await victim.child.waitReady()
  keep(victim.org, await runLoad({ url: () => victim.child.url, total: 30, concurrency: 6 }))

  // Every generation a client saw has its row; wait on that, then on the reconciler's rows too.
  const deadline = Date.now() + 30_000
  let rows: Array<{ generation_id: string, organization_id: string, cost: string }> = []
  for (;;) {
    rows = await db.sql`select generation_id, organization_id, cost_usd::text as cost from usage_events`
    const have = new Set(rows.map((r) => r.generation_id))
    if ([...seen.keys()].every((g) => have.has(g)) || Date.now() > deadline) break
    await new Promise((r) => setTimeout(r, 100))
  }
  // A request the kill cut before its generation was named is a row with no generation id
  // ('interrupted', its estimate only, no cost); every other row names one generation, once.
  const all = rows
  rows = all.filter((r) => r.generation_id !== null)
  const unnamed = await db.sql`select outcome, cost_usd from usage_events where generation_id is null`
  t.ok(unnamed.every((r) => r.outcome === 'interrupted' && r.cost_usd === null), 'a row without a generation id is one the kill interrupted, with no cost')
  const byGen = new Map(rows.map((r) => [r.generation_id, r]))
  t.same([...seen.keys()].filter((g) => !byGen.has(g)), [], 'no lost record')
  t.equal(byGen.size, rows.length, 'no duplicated record')
  t.same([...seen].filter(([g, org]) => byGen.get(g)?.organization_id !== org), [], 'each row in its own organization')
  t.same(rows.filter((r) => !fake.generations.has(r.generation_id)), [], 'no row for a generation that never was')
  for (const org of new Set(orgs)) {
    const mine = rows.filter((r) => r.organization_id === org)
    const [{ total }] = await db.sql`select coalesce(sum(cost_usd), 0)::text as total from usage_events where organization_id = ${org}`
    t.equal(total.replace(/\.?0+$/, ''), sumDecimals(mine.map((r) => fake.generations.get(r.generation_id)!.cost)), `${org}: total exact`)
  }

  for (const r of replicas) allLogs.push(r.child.logs())
  const logs = allLogs.flat()
  const migrated = logs.filter((l) => l.msg === 'schema ready' && l.applied.length > 0)
  t.equal(migrated.length, 1, 'one process applied the migrations, the others found them applied')
  // Once a day: one run per UTC date the processes booted on (a test crossing midnight has two).
  const runs = logs.filter((l) => l.msg === 'partition maintenance ran').map((l) => String(l.time).slice(0, 10))
  t.ok(runs.length >= 1, 'partition maintenance ran')
  t.equal(runs.length, new Set(runs).size, 'partition maintenance ran once a day, by one process')
  t.same(logs.filter((l) => /deadlock|40P01/i.test(JSON.stringify(l))), [], 'no deadlock anywhere')
  t.same((await verifyRollups(db.sql)).differences, [], 'rollups exact after concurrent writers and a kill')
  const [{ n }] = await db.sql`select count(*)::int as n from schema_migrations`
  t.ok(n >= 4)
  t.comment(`replicas: ${rows.length} rows from 5 processes, ${seen.size} seen by clients, kill + restart of ${victim.name}`)
})
