import t from 'tap'
import postgres from 'postgres'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { FakeCloudEvents } from './support/billing-receivers.js'
import { createTestDb, rowsSoon, withoutServer } from './support/db.js'
import { baseEnv, startSidecar } from './support/sidecar.js'

// The export runs on connections of its own: an exporter stuck on Postgres (here its lease row
// held by another session, so every renewal and every batch's fence waits) never takes the
// connections the ledger's inserts need. Requests keep getting their rows.

t.test('an exporter waiting on Postgres leaves the ledger its connections', async (t) => {
  if (await withoutServer(t, 'another session holding the export lease row while the sidecar writes')) return
  const fake = await new FakeOpenRouter(23).start()
  const ce = new FakeCloudEvents(undefined)
  const url = await ce.listen()
  const db = await createTestDb({ migrated: true })
  const aux = postgres(db.url, { max: 2, onnotice: () => {} })
  const s = await startSidecar(baseEnv(fake, db.url, {
    LOG_LEVEL: 'warn', CLOUDEVENTS_URL: url, EXPORT_POLL_MS: '20', EXPORT_LEASE_MS: '600',
    // The smallest primary pool: the ledger inserts one batch at a time on it.
    DATABASE_POOL_MAX: '2', DATABASE_QUERY_TIMEOUT_MS: '60000',
  }))
  t.teardown(async () => {
    await s.sidecar.stop('test end')
    await aux.end({ timeout: 1 })
    await ce.close()
    await fake.close()
    await db.drop()
  })
  const chat = async (i: number) => {
    const res = await request(`${s.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-openwebui-user-id': 'u1' },
      body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: `hello ${i}` }] }),
    })
    await res.body.text()
    return res.statusCode
  }
  t.equal(await chat(0), 200)
  const leased = await rowsSoon(async () => aux`select 1 from export_leases where expires_at > now()`, 30_000)
  t.equal(leased.length, 1, 'the exporter holds its lease')

  let release!: () => void
  let held!: () => void
  const holding = new Promise<void>((r) => { held = r })
  const locker = aux.begin(async (tx) => {
    await tx`select 1 from export_leases for update`
    held()
    await new Promise<void>((r) => { release = r })
  })
  await holding
  // Renewals pile up behind the lock, one every 200 ms, as many as the exporter's pool holds.
  const stuck = await rowsSoon(async () => {
    const [w] = await aux<{ n: number }[]>`select count(*)::int as n from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock' and query ilike '%export_leases%'`
    return w.n >= 2 ? [w.n] : []
  }, 30_000)
  t.ok(stuck.length === 1, `the exporter waits on the lease row (${stuck[0]} statements)`)

  const statuses = await Promise.all([1, 2, 3].map(chat))
  t.same(statuses, [200, 200, 200])
  const landed = await rowsSoon(async () => {
    const [r] = await aux<{ n: number }[]>`select count(*)::int as n from usage_events`
    return r.n === 4 ? [r] : []
  }, 15_000)
  t.equal(landed.length, 1, 'the ledger wrote every row while the exporter waited')
  const [{ at }] = await aux<{ at: string }[]>`select now()::text as at`
  release()
  await locker
  // Not its deliveries: the horizon is the cluster's, and another database's long transaction may
  // hold them back a while. Its lease renewals show it is back.
  const renewed = await rowsSoon(async () => aux`select 1 from export_leases where expires_at > ${at}::timestamptz + interval '600 milliseconds'`, 30_000)
  t.equal(renewed.length, 1, 'and the exporter renews its lease again once the lock is gone')
})
