import type { Sql } from './connect.js'

// Copies a whole ledger, every table of the schema, from one database into another that has the
// same schema and no rows: the way from the embedded database to a PostgreSQL server. Rows travel
// as JSON text (row_to_json, json_populate_recordset), so a numeric keeps every digit and a
// timestamp every microsecond. The copy is one transaction on the target, with the tables' own
// triggers off: the rows arrive with their rollups, generation ids and budget counters already
// counted, and an insert trigger would count them a second time.

const BATCH_ROWS = 2000

export interface CopiedTable { table: string, rows: number }
export interface CopyResult { tables: CopiedTable[], partitions: string[], costUsd: string, billedCostUsd: string }

export class CopyRefused extends Error {}

interface Column { name: string, generated: boolean }

/** Tables of the public schema, partitions left out (their rows are read through the parent). */
async function tablesOf (sql: Sql): Promise<string[]> {
  const rows = await sql<Array<{ name: string }>>`
    select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition and c.relname <> 'schema_migrations'
     order by c.relname`
  return rows.map((r) => r.name)
}

async function columnsOf (sql: Sql, table: string): Promise<Column[]> {
  const rows = await sql<Array<{ name: string, generated: string }>>`
    select column_name as name, is_generated as generated from information_schema.columns
     where table_schema = 'public' and table_name = ${table} order by ordinal_position`
  return rows.map((r) => ({ name: r.name, generated: r.generated === 'ALWAYS' }))
}

/** Referenced tables before the tables that reference them (foreign keys stay on during the copy). */
async function inKeyOrder (sql: Sql, tables: string[]): Promise<string[]> {
  const edges = await sql<Array<{ child: string, parent: string }>>`
    select conrelid::regclass::text as child, confrelid::regclass::text as parent
      from pg_constraint where contype = 'f' and connamespace = 'public'::regnamespace`
  const out: string[] = []
  const visit = (t: string, path: Set<string>): void => {
    if (out.includes(t) || path.has(t)) return
    path.add(t)
    for (const e of edges) if (e.child === t && e.parent !== t && tables.includes(e.parent)) visit(e.parent, path)
    out.push(t)
  }
  for (const t of tables) visit(t, new Set())
  return out
}

/** The months usage_events is partitioned into, as first days (YYYY-MM-DD). */
async function partitionMonths (sql: Sql): Promise<string[]> {
  const rows = await sql<Array<{ name: string }>>`
    select c.relname as name from pg_inherits i join pg_class c on c.oid = i.inhrelid
     where i.inhparent = 'usage_events'::regclass order by c.relname`
  return rows.flatMap((r) => {
    const m = /^usage_events_(\d{4})_(\d{2})$/.exec(r.name)
    return m ? [`${m[1]}-${m[2]}-01`] : []
  })
}

const ident = (name: string): string => `"${name.replace(/"/g, '""')}"`

async function ledgerSums (sql: Sql): Promise<{ cost: string, billed: string }> {
  const [r] = await sql<Array<{ cost: string, billed: string }>>`
    select coalesce(sum(cost_usd), 0)::text as cost, coalesce(sum(billed_cost_usd), 0)::text as billed from usage_events`
  return { cost: r.cost, billed: r.billed }
}

/**
 * Copies every row of `source` into `target`. Both must be migrated to the same schema; every
 * table of the target must be empty (a ledger is never merged into another one). Nothing is
 * written unless the whole copy succeeds and each table's count and the ledger's sums match.
 */
export async function copyLedger (source: Sql, target: Sql): Promise<CopyResult> {
  // One read-only snapshot of the source for every table and the sums checked at the end.
  return await source.begin('isolation level repeatable read read only', async (stx) => {
    const s = stx as unknown as Sql
    const tables = await tablesOf(s)
    const targetTables = new Set(await tablesOf(target))
    const missing = tables.filter((t) => !targetTables.has(t))
    if (missing.length > 0) throw new CopyRefused(`the target has no table ${missing.join(', ')}: its schema differs from the embedded database's`)
    const ordered = await inKeyOrder(s, tables)
    const months = await partitionMonths(s)
    const sums = await ledgerSums(s)
    return await target.begin(async (ttx) => {
      const t = ttx as unknown as Sql
      for (const table of ordered) {
        const [{ any }] = await t.unsafe<Array<{ any: boolean }>>(`select exists (select 1 from ${ident(table)}) as any`)
        if (any) throw new CopyRefused(`the target already holds rows in ${table}: copy into a database no sidecar has used yet (create an empty one)`)
      }
      // The same monthly partitions as the source, so every row lands in the partition it had.
      for (const month of months) await t`select usage_ensure_partition(${month}::date)`
      for (const table of ordered) await t.unsafe(`alter table ${ident(table)} disable trigger user`)
      const copied: CopiedTable[] = []
      for (const table of ordered) copied.push({ table, rows: await copyTable(s, t, table) })
      await rebaseExport(t)
      for (const table of ordered) await t.unsafe(`alter table ${ident(table)} enable trigger user`)
      const after = await ledgerSums(t)
      if (after.cost !== sums.cost || after.billed !== sums.billed) {
        throw new Error(`usage_events sums differ after the copy: cost ${sums.cost} -> ${after.cost}, billed ${sums.billed} -> ${after.billed}`)
      }
      return { tables: copied, partitions: months, costUsd: sums.cost, billedCostUsd: sums.billed }
    })
  }) as unknown as CopyResult
}

async function copyTable (source: Sql, target: Sql, table: string): Promise<number> {
  const columns = (await columnsOf(target, table)).filter((c) => !c.generated).map((c) => ident(c.name)).join(', ')
  let rows = 0
  for await (const batch of source.unsafe<Array<{ j: string }>>(`select row_to_json(r)::text as j from ${ident(table)} r`).cursor(BATCH_ROWS)) {
    // As text, then json: a string parameter typed json would be encoded once more, as a JSON string.
    const json = '[' + batch.map((r) => r.j).join(',') + ']'
    await target.unsafe(`insert into ${ident(table)} (${columns}) select ${columns} from json_populate_recordset(null::${ident(table)}, $1::text::json)`, [json])
    rows += batch.length
  }
  const [{ n }] = await target.unsafe<Array<{ n: string }>>(`select count(*)::text as n from ${ident(table)}`)
  if (Number(n) !== rows) throw new Error(`${table}: ${rows} rows read, ${n} in the target`)
  return rows
}

/**
 * The export's positions are transaction ids of the source cluster (sql/021_export.sql), which
 * mean nothing on the target: an embedded database may be millions of ids ahead of a fresh
 * server, so a copied cursor would sit above every row the target records for a long time and
 * skip them. The copied rows become rows "from before the export" (export_xid NULL, read first in
 * (created_at, event_id) order); the rows each sink had handled behind its cursor become
 * acknowledgements, so they are not sent again; every cursor starts over.
 */
async function rebaseExport (t: Sql): Promise<void> {
  await t`insert into export_acks (organization_id, sink, xid, created_at, event_id)
    select c.organization_id, c.sink, 0, e.created_at, e.event_id
      from export_cursors c join usage_events e on e.organization_id = c.organization_id
     where (coalesce(e.export_xid, 0), e.created_at, e.event_id) <= (c.xid, c.created_at, c.event_id)
    on conflict do nothing`
  await t`update export_acks set xid = 0 where xid <> 0`
  await t`update export_cursors set xid = 0, created_at = '-infinity', event_id = '00000000-0000-0000-0000-000000000000'`
  await t`update usage_events set export_xid = null where export_xid is not null`
}
