// What one committed usage row costs Postgres: the backend's CPU (ns, /proc/<pid>/schedstat of
// pg_backend_pid(), so other work on the machine does not count) and the WAL its transactions
// wrote (pg_walinspect, records of the batches' own xids only: the server is shared), per row, for
// the ledger's own batch statement (Ledger.insert: usage rows + user mappings in one statement,
// json parameters), B rows a batch, one connection per variant.
//
// Every variant is its own fresh database; the variants take turns batch group by batch group
// (ROUNDS rounds of PER rows each), so a busy machine or a growing table weighs on all alike.
// Medians of the per-round figures are printed.
//
//   npm run build && node bench/row-cost.js [--batch=256] [--rounds=6] [--batches=20] [--budgets]
//       [--variants=as-is,no-trigger,...] [--sql=DIR (another sql/ to migrate from)] [--before=DIR] [--prefill=N]
//   A before/after run: git archive <commit> sql | tar -x -C /tmp/before && node bench/row-cost.js --before=/tmp/before/sql --variants=before,as-is
//
// Variants: as-is (every migration and function as in --sql), no-trigger (the after-insert trigger
// disabled: json + heap + indexes), minus-step-N (the trigger without step N of
// 3-usage-after-insert.sql: 0 organizations, 1 claim, 2 budgets, 3 rollups, 4 group rollups),
// minus-index-NAME (one index of usage_events dropped), no-mappings (the statement without the
// user_mappings half). --budgets: the organization has a monthly budget and a default per-user
// budget (never reached), and each row's reservation is taken before its batch from a second
// connection (as admission does), so the insert settles and releases them.
// random-ids (event ids of version 4, as minted before session 19, instead of the sidecar's
// version 7), minimal (the trigger disabled and every index but the primary key and
// usage_events_org_created dropped: the row with no guarantee beyond its own uniqueness),
// claim-only (minimal plus the trigger's steps 0 and 1: the organizations and the generation-id
// claim, no budgets, no rollups).
// --prefill=N: N rows (200 users, 7 models, the last hour) in the month's partition first, ids of
// the variant's form, so the indexes are the size of a busy month's rather than a few pages.
import { readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import { freshDatabase } from './db.js'
import { ROOT } from './targets.js'

const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
const BATCH = Number(arg('batch', '256'))
const ROUNDS = Number(arg('rounds', '120'))
const BATCHES = Number(arg('batches', '1'))
const COMPACT_EVERY = 10 // rounds: the sidecar folds the deltas every 2 s
const BUDGETS = process.argv.includes('--budgets')
const PREFILL = Number(arg('prefill', '0'))
const SQL_DIR = resolve(arg('sql', join(ROOT, 'sql')))
/** --before=DIR: a variant "before", the whole schema migrated from another sql/ (e.g. `git archive 88e5bcb sql`). */
const BEFORE_DIR = arg('before', null)
const { ROW_COLUMNS, toRow } = await import(join(ROOT, 'dist', 'usage', 'ledger', 'record.js'))
const { migrate } = await import(join(ROOT, 'dist', 'db', 'migrate.js'))
const { Ledger } = await import(join(ROOT, 'dist', 'usage', 'ledger', 'ledger.js'))
const { uuid7 } = await import(join(ROOT, 'dist', 'lib', 'uuid7.js'))

const INDEXES = ['usage_events_pkey', 'usage_events_org_created', 'usage_events_user_created', 'usage_events_org_model_created',
  'usage_events_org_served_model_created', 'usage_events_org_not_ok_sums', 'usage_events_estimated', 'usage_events_client_aborted',
  'usage_events_export_xid']
const afterInsert = readFileSync(join(SQL_DIR, 'functions', '3-usage-after-insert.sql'), 'utf8')
/** The trigger function without steps ns (each step's text from "-- n." to the next step or RETURN NULL). */
function withoutStep (...ns) {
  let text = afterInsert
  for (const n of ns) {
    const start = text.search(new RegExp(`\\n  -- ${n}\\. `))
    if (start < 0) throw new Error(`step ${n} not found`)
    const rest = text.slice(start + 1)
    const next = rest.search(/\n  -- \d\. |\n  RETURN NULL;/)
    text = text.slice(0, start + 1) + rest.slice(next + 1)
  }
  return text
}
/** Every index of usage_events but its primary key and the organization + time one. */
const dropAllButTwo = async (sql) => { for (const i of INDEXES.filter((i) => i !== 'usage_events_pkey' && i !== 'usage_events_org_created')) await sql.unsafe(`drop index ${i}`) }

const VARIANTS = {
  'as-is': async () => {},
  before: async () => {},
  'no-trigger': (sql) => sql`alter table usage_events disable trigger usage_events_after_insert`,
  'no-mappings': async () => {},
  'no-mappings-no-on-conflict': async () => {},
  'random-ids': async () => {},
  minimal: async (sql) => { await sql`alter table usage_events disable trigger usage_events_after_insert`; await dropAllButTwo(sql) },
  'claim-only': async (sql) => { await sql.unsafe(withoutStep(2, 3, 4)); await dropAllButTwo(sql) },
  ...Object.fromEntries([0, 1, 2, 3, 4].map((n) => [`minus-step-${n}`, (sql) => sql.unsafe(withoutStep(n))])),
  ...Object.fromEntries(INDEXES.map((i) => [`minus-index-${i.replace('usage_events_', '')}`,
    (sql) => i === 'usage_events_pkey' ? sql.unsafe('alter table usage_events drop constraint usage_events_pkey') : sql.unsafe(`drop index ${i}`)])),
}
const chosen = arg('variants', 'as-is,no-trigger,no-mappings,minus-step-0,minus-step-1,minus-step-2,minus-step-3,minus-step-4').split(',')
for (const v of chosen) if (!VARIANTS[v]) throw new Error(`unknown variant ${v}; known: ${Object.keys(VARIANTS).join(', ')}`)

let seq = 0
/**
 * A finished chat record as the sidecar makes it: 200 users, 7 models, 1 in 10 a title. A record
 * carries its user's mapping only when the user is new or once a minute (src/identity/directory.ts):
 * here the first record of each batch does, so the statement's user_mappings half always runs.
 */
function record (i, randomIds = false) {
  const u = i % 200
  return {
    eventId: randomIds ? randomUUID() : uuid7(), generationId: `gen-row-${process.pid}-${seq++}`, organizationId: 'bench_org', userId: `user-${u}`, externalUserId: `bench_org_u${u}`,
    endpoint: 'chat/completions', model: `vendor/model-${i % 7}`, servedModel: `vendor/model-${i % 7}`, provider: 'P', streamed: true, status: 200, outcome: 'ok',
    finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: 42, completionTokens: 24, totalTokens: 66, cachedTokens: 0, reasoningTokens: 0,
    costUsd: '0.0000267', upstreamCostUsd: null, isByok: false, markupPercent: '0', latencyMs: 812.25, ttfbMs: 120.5, chatId: null,
    kind: i % 10 === 0 ? 'title_generation' : 'chat', messageId: null, createdAt: new Date().toISOString(), groups: [],
    mapping: i === 0 ? { userId: `user-${u}`, name: `User ${u}`, email: `u${u}@example.com`, role: 'user', groups: [] } : null,
  }
}

const silent = { info () {}, warn () {}, error () {}, debug () {}, child () { return silent } }
const cpuNs = (pid) => Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0])

async function open (name, setup) {
  const url = await freshDatabase(`row_cost_${name.replace(/[^a-z0-9]/g, '_')}`)
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  await migrate(sql, name === 'before' ? resolve(BEFORE_DIR) : SQL_DIR)
  await sql`create extension if not exists pg_walinspect`
  await sql`insert into organizations (id, name) values ('bench_org', 'Bench')`
  if (BUDGETS) {
    await sql`insert into budgets (organization_id, scope, user_id, limit_usd, period) values
      ('bench_org', 'organization', '', 1000000, 'month'), ('bench_org', 'default-user', '', 1000000, 'month')`
  }
  await setup(sql)
  if (PREFILL > 0) await prefill(sql, name === 'random-ids')
  const [{ pid }] = await sql`select pg_backend_pid() as pid`
  const side = BUDGETS ? postgres(url, { max: 1, onnotice: () => {} }) : null
  const ledger = new Ledger(sql, null, silent, { batchSize: BATCH, flushMs: 50 })
  const insert = name === 'no-mappings'
    ? (rows) => sql`insert into usage_events (${sql(ROW_COLUMNS)}) select ${sql(ROW_COLUMNS)}
        from json_populate_recordset(null::usage_events, ${sql.typed(rows.map(toRow), 114)}) on conflict do nothing`
    : name === 'no-mappings-no-on-conflict'
      ? (rows) => sql`insert into usage_events (${sql(ROW_COLUMNS)}) select ${sql(ROW_COLUMNS)}
        from json_populate_recordset(null::usage_events, ${sql.typed(rows.map(toRow), 114)})`
      : (rows) => ledger.insert(rows) // the ledger's own statement (private in TypeScript only)
  return { name, sql, pid, side, insert, ledger, rounds: [] }
}

/** PREFILL rows of the last hour, straight into the table (the trigger off meanwhile), their ids claimed. */
async function prefill (sql, randomIds) {
  const [{ on }] = await sql`select tgenabled <> 'D' as on from pg_trigger where tgname = 'usage_events_after_insert' and tgrelid = 'usage_events'::regclass`
  await sql`alter table usage_events disable trigger usage_events_after_insert`
  const id = randomIds
    ? sql`gen_random_uuid()`
    : sql`(lpad(to_hex((extract(epoch from t) * 1000)::bigint), 12, '0') || '7' || substr(md5(i::text), 1, 3) || '8' || substr(md5(i::text), 4, 15))::uuid`
  await sql`insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, served_model, provider,
      streamed, status, outcome, usage_source, prompt_tokens, completion_tokens, total_tokens, cost_usd, markup_percent, is_byok, kind, created_at)
    select ${id}, 'gen-pre-' || i, 'bench_org', 'user-' || (i % 200), 'bench_org_u' || (i % 200), 'chat/completions', 'vendor/model-' || (i % 7),
      'vendor/model-' || (i % 7), 'P', true, 200, 'ok', 'inline', 42, 24, 66, 0.0000267, 0, false, 'chat', t
    from (select i, now() - interval '1 hour' + i * (interval '1 hour' / ${PREFILL}) as t from generate_series(1, ${PREFILL}::int) i) x`
  await sql`insert into usage_generation_ids (generation_id, created_at) select generation_id, created_at from usage_events`
  if (on) await sql`alter table usage_events enable trigger usage_events_after_insert`
  await sql`vacuum analyze usage_events`
}

async function reserve (v, rows) {
  const items = rows.map((r, i) => ({ i, org: r.organizationId, usr: r.userId, groups: [], key: null, ev: r.eventId, amount: '0.001', at: r.createdAt }))
  await v.side.unsafe('select count(*) from budget_reserve_many($1::text::jsonb, make_interval(secs => 600))', [JSON.stringify(items)])
}

async function round (v, batches) {
  let ns = 0
  for (const rows of batches) {
    if (v.side) await reserve(v, rows)
    const c0 = cpuNs(v.pid)
    await v.insert(rows)
    ns += cpuNs(v.pid) - c0
  }
  return ns
}

const variants = []
for (const name of chosen) variants.push(await open(name, VARIANTS[name]))
const make = (v) => Array.from({ length: BATCHES }, () => Array.from({ length: BATCH }, (_, i) => record(i, v.name === 'random-ids')))
for (const v of variants) await round(v, make(v).slice(0, 3)) // warm: plans cached, partitions touched
// WAL is recycled at every checkpoint (and CREATE DATABASE checkpoints): a temporary slot, dropped
// with its session, keeps it until the end of the run.
const keeper = postgres((await import('./db.js')).dbUrl('postgres'), { max: 1, onnotice: () => {} })
await keeper`select pg_create_physical_replication_slot(${`row_cost_${process.pid}`}, true, true)`
const lsn = {}
for (const v of variants) [{ l: lsn[v.name] }] = await v.sql`select pg_current_wal_lsn()::text as l`
for (let r = 0; r < ROUNDS; r++) {
  const order = r % 2 === 0 ? variants : [...variants].reverse()
  for (const v of order) v.rounds.push((await round(v, make(v))) / (BATCHES * BATCH))
  if ((r + 1) % COMPACT_EVERY === 0) {
    // The compaction's CPU, per row it folded (the ledger's rows since the last one): Postgres work
    // each row causes too, in another backend in production.
    for (const v of order) {
      const c0 = cpuNs(v.pid)
      await v.sql`select usage_rollup_compact()`
      v.compactNs = (v.compactNs ?? 0) + cpuNs(v.pid) - c0
    }
  }
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2 }
const out = []
for (const v of variants) {
  // WAL of this database's batches: the records that touch its relations (a subtransaction's
  // records carry the subtransaction's xid) and those of the xids its rows carry (export_xid's
  // default: their commit records). Its compactions' records count too (the compaction column).
  const [w] = await v.sql`
    with x as (select distinct (export_xid % 4294967296)::text::xid as xid from usage_events where export_xid is not null),
    d as (select '/' || oid || '/' as db from pg_database where datname = current_database())
    select coalesce(sum(record_length), 0)::bigint as bytes, count(*)::int as records, (select count(*) from usage_events)::int as rows
      from pg_get_wal_records_info(${lsn[v.name]}::pg_lsn, pg_current_wal_flush_lsn()) w
     where w.xid in (select xid from x) or position((select db from d) in coalesce(w.block_ref, '')) > 0`
  const warmRows = 3 * BATCH
  const measured = w.rows - warmRows - PREFILL
  const compacted = Math.floor(ROUNDS / COMPACT_EVERY) * COMPACT_EVERY * BATCHES * BATCH
  out.push({ variant: v.name, usPerRow: Math.round(median(v.rounds) / 10) / 100, meanUsPerRow: Math.round(v.rounds.reduce((a, b) => a + b, 0) / v.rounds.length / 10) / 100,
    compactUsPerRow: Math.round((v.compactNs ?? 0) / compacted / 10) / 100,
    walBytesPerRow: Math.round(w.bytes / measured), walRecordsPerRow: Math.round(w.records / measured * 100) / 100 })
  clearInterval(v.ledger.watchdog)
  await v.sql.end(); await v.side?.end()
}
await keeper.end()
const base = out.find((o) => o.variant === 'as-is')
console.log(`batch ${BATCH}, ${ROUNDS} rounds x ${BATCHES} batches${PREFILL ? `, ${PREFILL} rows prefilled` : ''}${BUDGETS ? ', budgets + reservations' : ''}, sql ${SQL_DIR}`)
console.log('variant'.padEnd(40), 'insert µs/row: median', ' mean', ' Δ median vs as-is', ' compaction µs/row', ' WAL B/row', ' WAL records/row')
for (const o of out) {
  console.log(o.variant.padEnd(40), String(o.usPerRow).padStart(21), String(o.meanUsPerRow).padStart(5), (base ? (o.usPerRow - base.usPerRow).toFixed(2) : '').padStart(18),
    String(o.compactUsPerRow).padStart(18), String(o.walBytesPerRow).padStart(10), String(o.walRecordsPerRow).padStart(16))
}
if (process.env.ROW_COST_JSON) process.stdout.write(JSON.stringify(out) + '\n')
