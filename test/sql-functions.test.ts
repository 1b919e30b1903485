import t from 'tap'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { createTestDb, type TestDb } from './support/db.js'
import { migrate } from '../src/db/migrate.js'

// The money logic has one place to read: every function and trigger of a migrated database has
// exactly one current definition in sql/functions/, each is called by something (so a dead one
// fails here), usage_events has one after-insert path (no order left to trigger names), and
// nothing notifies a channel nobody listens on.

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const FUNCTIONS_DIR = join(root, 'sql', 'functions')
const functionFiles = readdirSync(FUNCTIONS_DIR).filter((f) => f.endsWith('.sql')).sort()
const functionsText = functionFiles.map((f) => readFileSync(join(FUNCTIONS_DIR, f), 'utf8')).join('\n')
const srcText = (readdirSync(join(root, 'src'), { recursive: true }) as string[])
  .filter((f) => f.endsWith('.ts')).map((f) => readFileSync(join(root, 'src', f), 'utf8')).join('\n')

let db: TestDb
t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, join(root, 'sql'))
  // Partitions as maintenance makes them: a trigger on one would fire beside the parent's.
  await db.sql`select usage_ensure_partition(current_date), usage_ensure_partition((current_date + interval '1 month')::date)`
})
t.teardown(() => db.drop())

/** Our functions (schema public, none an extension's), one row per overload. */
async function ourFunctions (): Promise<Array<{ name: string, body: string }>> {
  return (await db.sql<Array<{ name: string, body: string }>>`
    select p.proname as name, p.prosrc as body from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname = 'public' and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')
     order by 1`).map((r) => ({ name: r.name, body: r.body }))
}

const count = (text: string, re: RegExp): number => text.match(re)?.length ?? 0

t.test('usage_events and its partitions have exactly one after-insert trigger', async (t) => {
  const rows = await db.sql`
    select t.tgrelid::regclass::text as tbl, t.tgname, t.tgfoid::regproc::text as fn from pg_trigger t
     where not t.tgisinternal and (t.tgtype & 4) <> 0 and (t.tgtype & 2) = 0 and (t.tgtype & 64) = 0
       and (t.tgrelid = 'usage_events'::regclass or t.tgrelid in (select inhrelid from pg_inherits where inhparent = 'usage_events'::regclass))`
  t.same(rows.map((r) => `${r.tbl}.${r.tgname} -> ${r.fn}`), ['usage_events.usage_events_after_insert -> usage_after_insert'])
  const [{ n }] = await db.sql`select count(*)::int as n from pg_inherits where inhparent = 'usage_events'::regclass`
  t.ok(n >= 3, 'checked with partitions present (default, this month, next month)')
})

t.test('no function body calls pg_notify', async (t) => {
  t.same((await ourFunctions()).filter((f) => /pg_notify/i.test(f.body)).map((f) => f.name), [])
  t.notMatch(functionsText, /pg_notify|\bNOTIFY\b/i, 'nor does any statement of sql/functions/')
})

t.test('every function of the database has exactly one definition in sql/functions/, and it is current', async (t) => {
  const fns = await ourFunctions()
  t.ok(fns.length > 10, `${fns.length} functions`)
  const overloads = new Map<string, number>()
  for (const f of fns) overloads.set(f.name, (overloads.get(f.name) ?? 0) + 1)
  for (const [name, n] of overloads) {
    t.equal(count(functionsText, new RegExp(`CREATE OR REPLACE FUNCTION ${name}\\s*\\(`, 'g')), n, `${name}: ${n} definition(s) in sql/functions/`)
  }
  const defined = [...functionsText.matchAll(/CREATE (?:OR REPLACE )?FUNCTION (\w+)\s*\(/g)].map((m) => m[1])
  t.same(defined.filter((name) => !overloads.has(name)), [], 'and sql/functions/ defines nothing the database lacks')
  t.notMatch(functionsText, /CREATE FUNCTION/, 'always CREATE OR REPLACE: the files are re-applied at every boot')
})

t.test('every trigger is created by sql/functions/ (through ensure_triggers)', async (t) => {
  const triggers = (await db.sql`select tgname from pg_trigger where not tgisinternal and tgparentid = 0 order by 1`).map((r) => r.tgname as string)
  t.ok(triggers.length > 0)
  for (const name of triggers) {
    t.match(functionsText, new RegExp(`ensure_triggers\\([^;]*'CREATE TRIGGER ${name} `), `${name}`)
  }
})

t.test('every function is called: by a trigger, another function, a statement of sql/functions/ or src/', async (t) => {
  const fns = await ourFunctions()
  const triggerFns = new Set((await db.sql`select distinct tgfoid::regproc::text as f from pg_trigger where not tgisinternal`).map((r) => r.f as string))
  // The files' own statements, function bodies left out (those are read from the database).
  const statements = functionsText.replace(/\$\$[\s\S]*?\$\$/g, '$$$$')
  const names = [...new Set(fns.map((f) => f.name))]
  const dead = names.filter((name) => {
    const called = new RegExp(`\\b${name}\\s*\\(`, 'i')
    return !triggerFns.has(name) &&
      !fns.some((other) => other.name !== name && called.test(other.body)) &&
      !called.test(statements.replace(new RegExp(`FUNCTION ${name}\\s*\\(`, 'g'), '')) &&
      !new RegExp(`\\b${name}\\b`).test(srcText)
  })
  t.same(dead, [], 'no dead function')
})

t.test('a usage row for an unknown organization is refused by the one path, with the foreign key\'s SQLSTATE, and leaves nothing behind', async (t) => {
  await db.sql`insert into organizations (id, name) values ('mai_client_known', 'Known')`
  const row = (org: string, gen: string) => db.sql`
    insert into usage_events (event_id, generation_id, organization_id, external_user_id, endpoint, streamed, status, outcome, usage_source, cost_usd, markup_percent, created_at, kind)
    values (gen_random_uuid(), ${gen}, ${org}, ${`${org}_user`}, 'chat/completions', false, 200, 'ok', 'inline', 0.5, 0, now(), 'chat')`
  t.match(await row('mai_client_unknown', 'gen-unknown').catch((e: unknown) => e), { code: '23503', message: /organization 'mai_client_unknown', which does not exist/ })
  const [left] = await db.sql`select (select count(*) from usage_generation_ids)::int as ids, (select count(*) from usage_rollup_deltas)::int as deltas,
                                     (select count(*) from usage_events)::int as rows`
  t.same(left, { ids: 0, deltas: 0, rows: 0 }, 'no claim, no rollup, no row')
  await row('mai_client_known', 'gen-known')
  const [after] = await db.sql`select (select count(*) from usage_generation_ids)::int as ids, (select count(*) from usage_rollup_deltas)::int as deltas`
  t.same(after, { ids: 1, deltas: 1 }, 'a known organization\'s row is claimed and rolled up')
})

t.test('docs/money-flow.md names only files, SQL functions and triggers that exist', async (t) => {
  const doc = readFileSync(join(root, 'docs', 'money-flow.md'), 'utf8')
  const paths = [...doc.matchAll(/`((?:src|sql)\/[\w./-]+)`/g)].map((m) => m[1])
  const files = [...doc.matchAll(/`(\d-[\w-]+\.sql)`/g)].map((m) => `sql/functions/${m[1]}`)
  t.ok(paths.length > 15, `${paths.length} paths`)
  for (const p of [...paths, ...files]) t.ok(existsSync(join(root, p)), p)
  const fns = new Set((await ourFunctions()).map((f) => f.name))
  const named = [...doc.matchAll(/`(\w+)\(\)`/g)].map((m) => m[1])
  t.ok(named.length > 10, `${named.length} functions`)
  t.same(named.filter((n) => !fns.has(n)), [], 'every function named is defined')
  const triggers = new Set((await db.sql`select tgname from pg_trigger where not tgisinternal`).map((r) => r.tgname as string))
  const namedTriggers = [...doc.matchAll(/`(\w+)`/g)].map((m) => m[1]).filter((n) => /^(usage_events|budgets|organizations)_/.test(n) && !fns.has(n))
  t.same(namedTriggers.filter((n) => !triggers.has(n)), [], 'every trigger named exists')
})
