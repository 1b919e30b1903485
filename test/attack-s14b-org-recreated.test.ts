import t from 'tap'
import postgres from 'postgres'
import { randomUUID } from 'node:crypto'
import { createTestDb, withoutServer } from './support/db.js'

// usage_after_insert's organization check locks the named organizations FOR KEY SHARE and, when
// it locked fewer than were named, asks which one is missing with a new snapshot. An organization
// replaced (deleted and inserted again in one transaction: it had no usage yet) while the lock
// waits is skipped by the lock and found again by the question: it exists, and the row goes in,
// as it did for the foreign key; the check must not refuse it naming no organization.
t.test('an organization replaced while the check waits on it: the row goes in, no foreign key violation naming NULL', async (t) => {
  if (await withoutServer(t, 'a second session holding a row lock')) return
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const other = postgres(db.url, { max: 1, onnotice: () => {} })
  t.teardown(() => other.end({ timeout: 1 }))
  await db.sql`insert into organizations (id, name) values ('org_r', 'R')`
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  let replaced!: () => void
  const isReplaced = new Promise<void>((resolve) => { replaced = resolve })
  const replacer = other.begin(async (tx) => {
    await tx`delete from organizations where id = 'org_r'`
    await tx`insert into organizations (id, name) values ('org_r', 'R again')`
    replaced()
    await held
  })
  await isReplaced
  const insert = db.sql`insert into usage_events (event_id, generation_id, organization_id, external_user_id, endpoint, streamed, status, outcome, usage_source, markup_percent, cost_usd, created_at)
    values (${randomUUID()}, 'gen-r-1', 'org_r', 'x', 'chat/completions', false, 200, 'ok', 'inline', 0, 1.5, '2027-01-02T00:00:00Z')`.execute()
  // the insert waits on the replacer's lock of org_r
  for (let i = 0; i < 100; i++) {
    const [w] = await db.sql`select count(*)::int n from pg_stat_activity where datname = ${db.name} and wait_event_type = 'Lock'`
    if (w!.n > 0) break
    await new Promise((r) => setTimeout(r, 20))
  }
  release()
  await replacer
  const err = await insert.then(() => null, (e: { code?: string, message?: string }) => e)
  t.equal(err?.message ?? null, null, 'the insert is not refused (it was refused: ' + (err?.message ?? '') + ')')
  const [r] = await db.sql`select count(*)::int n from usage_events where generation_id = 'gen-r-1'`
  t.equal(r!.n, 1, 'the row is in')
})
