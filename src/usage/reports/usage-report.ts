import type { Sql } from '../../db/connect.js'

// Every read behind the usage API, the /admin/ page, statements and "My usage", in one place.
// Money and token sums leave Postgres as text (exact numeric, no float on the way); counts are
// small enough for a JS number. Sums over whole UTC days come from the daily rollups
// (usage_daily_rollups, migration 007 of the scale work) when that table exists, else from
// usage_events: the two give the same digits, the rollups in a fraction of the time. Whole
// calendar months inside a range come from the monthly rollups (migration 009) when they exist,
// and an organization's days, kinds and totals from its per-day sums: a year is then twelve
// months of rows, not 365 days of every user's.

// By group: a row made by a member of several groups is in each of those groups' sums (the group
// rollups, sql/023); every other grouping counts it once. So the rows of group_by=group can add up
// to more than the period's total, and its totals are read on their own.

export type GroupBy = 'user' | 'model' | 'day' | 'task' | 'outcome' | 'group'
export const GROUP_BYS: readonly GroupBy[] = ['user', 'model', 'day', 'task', 'outcome', 'group']

export interface Period {
  organizationId: string
  /** Inclusive, UTC, YYYY-MM-DD or an ISO instant. */
  from: string
  /** Exclusive. */
  to: string
  /** One user's rows: their external id (the indexed column; the organization's own id for requests with no user). */
  externalUserId?: string
  /** One group's rows: those whose user was in this group when they were made. */
  group?: string
}

export interface Sums {
  requests: number
  prompt_tokens: string
  completion_tokens: string
  cached_tokens: string
  reasoning_tokens: string
  total_tokens: string
  cost_usd: string
  billed_cost_usd: string
}

export interface GroupRow extends Sums {
  key: string | null
  /** group_by=user only: from user_mappings. */
  user_name?: string | null
  user_email?: string | null
  /** group_by=group only: the users with usage in that group over the period. */
  members?: number
}

/**
 * events: usage_events; rollups: the daily rollups; monthly: migration 009's rollups where they
 * answer (whole months per user and model, an organization's days and kinds), the daily ones for
 * the rest.
 */
export type Source = 'events' | 'rollups' | 'monthly'

const TOKENS = ['prompt_tokens', 'completion_tokens', 'cached_tokens', 'reasoning_tokens', 'total_tokens', 'cost_usd', 'billed_cost_usd']

const SUMMED = 'requests, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, total_tokens, cost_usd, billed_cost_usd'

/**
 * The rollup rows as of now: the folded rows plus the deltas not folded yet, as one relation, not
 * regrouped per rollup key (what usage_daily_totals does): every reader sums them by its own
 * key anyway, and regrouping 750,000 rows by five keys spilled to disk. Filters on the key
 * columns reach both tables, so the folded rows are an index range scan.
 */
const DAILY_ROWS = `(select organization_id, day, external_user_id, model, kind, ${SUMMED} from usage_daily_rollups
  union all select organization_id, day, external_user_id, model, kind, ${SUMMED} from usage_rollup_deltas) d`
const MONTHLY_ROWS = `(select organization_id, month, external_user_id, model, kind, ${SUMMED} from usage_monthly_rollups
  union all select organization_id, date_trunc('month', day::timestamp)::date, external_user_id, model, kind, ${SUMMED} from usage_rollup_deltas) m`
/** The group rollups as of now (sql/023): one row per group of each grouped usage row. */
const GROUP_DAILY_ROWS = `(select organization_id, day, group_id, external_user_id, model, kind, ${SUMMED} from usage_group_daily_rollups
  union all select organization_id, day, group_id, external_user_id, model, kind, ${SUMMED} from usage_group_rollup_deltas) d`
const GROUP_MONTHLY_ROWS = `(select organization_id, month, group_id, external_user_id, model, kind, ${SUMMED} from usage_group_monthly_rollups
  union all select organization_id, date_trunc('month', day::timestamp)::date, group_id, external_user_id, model, kind, ${SUMMED}
  from usage_group_rollup_deltas) m`
const GROUP_COLUMNS = `organization_id, group_id, external_user_id, model, kind, ${SUMMED}`
const ORG_DAILY_ROWS = `(select organization_id, day, kind, ${SUMMED} from usage_org_daily_rollups
  union all select organization_id, day, kind, ${SUMMED} from usage_rollup_deltas) o`

/** The sums and keys of each source, as SQL. Rollup rows are already sums: requests is summed, not counted. */
const SOURCE = {
  events: {
    table: 'usage_events',
    sums: ['count(*)::int as requests', ...TOKENS.map((c) => `coalesce(sum(${c}), 0)::text as ${c}`)].join(', '),
    billed: 'coalesce(sum(billed_cost_usd), 0)',
    key: {
      user: 'external_user_id',
      model: 'coalesce(served_model, model)',
      day: `(created_at at time zone 'UTC')::date`,
      task: 'kind',
      outcome: 'outcome',
      group: 'g.group_id',
    } as Record<GroupBy, string>,
    userId: 'max(user_id)',
  },
  rollups: {
    table: DAILY_ROWS, // folded rollups plus the deltas not folded yet: exact at every moment
    sums: ['coalesce(sum(requests), 0)::int as requests', ...TOKENS.map((c) => `coalesce(sum(${c}), 0)::text as ${c}`)].join(', '),
    billed: 'coalesce(sum(billed_cost_usd), 0)',
    key: {
      user: 'external_user_id',
      model: `nullif(model, '')`,
      day: 'day',
      task: 'kind',
      outcome: 'null', // not in the rollups: see outcomesWithRollups()
      group: 'group_id', // only in the group rollups (rowsOf)
    } as Record<GroupBy, string>,
    userId: 'null::text',
  },
} as Record<Source, { table: string, sums: string, billed: string, key: Record<GroupBy, string>, userId: string }>
SOURCE.monthly = SOURCE.rollups

/** Largest spend first (what a reader looks for), days in calendar order. */
const ORDER: Record<Exclude<GroupBy, 'user'>, string> = {
  model: 'billed_cost_usd_n desc, requests desc, key',
  group: 'billed_cost_usd_n desc, requests desc, key',
  day: 'key',
  task: 'requests desc, key',
  outcome: 'requests desc, key',
}

const WHOLE_DAY = /^\d{4}-\d{2}-\d{2}(T00:00:00(\.0+)?Z)?$/
const rollupsPresent = new WeakMap<object, Promise<Source>>()

/**
 * Rollups answer whole UTC days; which rollups exist is asked once per pool. For outcomes they
 * give the totals, and failedByOutcome() the rest.
 */
export async function sumsSource (sql: Sql, p: Period): Promise<Source> {
  if (!WHOLE_DAY.test(p.from) || !WHOLE_DAY.test(p.to)) return 'events'
  let present = rollupsPresent.get(sql)
  if (!present) {
    present = sql<Array<{ daily: boolean, monthly: boolean }>>`
      select to_regclass('usage_daily_totals') is not null as daily, to_regclass('usage_monthly_totals') is not null as monthly`
      .then(([r]): Source => r.monthly ? 'monthly' : r.daily ? 'rollups' : 'events')
    present.catch(() => rollupsPresent.delete(sql))
    rollupsPresent.set(sql, present)
  }
  return present
}

const dayOf = (t: string): string => t.slice(0, 10)

/**
 * The whole calendar months inside [from, to) as [first month's first day, the day after the
 * last month], or null when there is none.
 */
export function wholeMonths (from: string, to: string): [string, string] | null {
  const f = new Date(`${dayOf(from)}T00:00:00Z`)
  const t = new Date(`${dayOf(to)}T00:00:00Z`)
  const first = f.getUTCDate() === 1 ? f : new Date(Date.UTC(f.getUTCFullYear(), f.getUTCMonth() + 1, 1))
  const end = new Date(Date.UTC(t.getUTCFullYear(), t.getUTCMonth(), 1))
  return first < end ? [first.toISOString().slice(0, 10), end.toISOString().slice(0, 10)] : null
}

const ROLLUP_COLUMNS = `organization_id, external_user_id, model, kind, ${SUMMED}`

/**
 * The rollup rows of whole days [from, to) as one relation: whole months from the monthly rollups,
 * the days before and after them from the daily ones (each part a plain range on its table's
 * key, so each is an index range scan). Both carry the deltas not folded yet: exact at every moment.
 */
function monthlyAndDaily (sql: Sql, organizationId: string | undefined, from: string, to: string, externalUserId?: string) {
  const filter = sql`${organizationId === undefined ? sql`` : sql`and organization_id = ${organizationId}`}
    ${externalUserId === undefined ? sql`` : sql`and external_user_id = ${externalUserId}`}`
  const daily = (lo: string, hi: string) => sql`
    select ${sql.unsafe(ROLLUP_COLUMNS)} from ${sql.unsafe(DAILY_ROWS)} where day >= ${lo}::date and day < ${hi}::date ${filter}`
  const months = wholeMonths(from, to)
  if (months === null) return sql`(${daily(dayOf(from), dayOf(to))}) r`
  const [m1, m2] = months
  const parts = [sql`select ${sql.unsafe(ROLLUP_COLUMNS)} from ${sql.unsafe(MONTHLY_ROWS)} where month >= ${m1}::date and month < ${m2}::date ${filter}`]
  if (dayOf(from) < m1) parts.push(daily(dayOf(from), m1))
  if (m2 < dayOf(to)) parts.push(daily(m2, dayOf(to)))
  return sql`(${parts.reduce((a, b) => sql`${a} union all ${b}`)}) r`
}

/**
 * The group rollup rows of whole days [from, to), as monthlyAndDaily() reads the others: whole
 * months from the monthly group rollups, the days around them from the daily ones.
 */
function groupMonthlyAndDaily (sql: Sql, organizationId: string | undefined, from: string, to: string, filter: ReturnType<Sql>) {
  const org = organizationId === undefined ? sql`` : sql`and organization_id = ${organizationId}`
  const daily = (lo: string, hi: string) => sql`
    select ${sql.unsafe(GROUP_COLUMNS)} from ${sql.unsafe(GROUP_DAILY_ROWS)} where day >= ${lo}::date and day < ${hi}::date ${org} ${filter}`
  const months = wholeMonths(from, to)
  if (months === null) return sql`(${daily(dayOf(from), dayOf(to))}) r`
  const [m1, m2] = months
  const parts = [sql`select ${sql.unsafe(GROUP_COLUMNS)} from ${sql.unsafe(GROUP_MONTHLY_ROWS)} where month >= ${m1}::date and month < ${m2}::date ${org} ${filter}`]
  if (dayOf(from) < m1) parts.push(daily(dayOf(from), m1))
  if (m2 < dayOf(to)) parts.push(daily(m2, dayOf(to)))
  return sql`(${parts.reduce((a, b) => sql`${a} union all ${b}`)}) r`
}

function where (sql: Sql, p: Period, source: Source) {
  const user = p.externalUserId === undefined ? sql`` : sql`and external_user_id = ${p.externalUserId}`
  const range = source === 'events'
    ? sql`created_at >= ${p.from}::timestamptz and created_at < ${p.to}::timestamptz`
    : sql`day >= ${p.from}::timestamptz::date and day < ${p.to}::timestamptz::date`
  return sql`organization_id = ${p.organizationId} and ${range} ${user}`
}

/**
 * `from <relation> where <filter>` of a source. With migration 009: an organization's days, kinds
 * and totals from its per-day sums (a few rows a day), users and models from the monthly rollups
 * and the days around them; one user's days from the daily rollups.
 */
function rowsOf (sql: Sql, p: Period, source: Source, groupBy?: GroupBy) {
  if (groupBy === 'group' || p.group !== undefined) {
    // One row per group of each usage row: from the group rollups, or the ledger's rows unnested.
    const only = p.group === undefined ? sql`` : sql`and group_id = ${p.group}`
    if (source === 'events') return sql`usage_events cross join lateral unnest(groups) as g(group_id) where ${where(sql, p, source)} ${only}`
    if (source === 'monthly' && groupBy !== 'day') {
      const user = p.externalUserId === undefined ? sql`` : sql`and external_user_id = ${p.externalUserId}`
      return sql`${groupMonthlyAndDaily(sql, p.organizationId, p.from, p.to, sql`${only} ${user}`)} where true`
    }
    return sql`${sql.unsafe(GROUP_DAILY_ROWS)} where ${where(sql, p, 'rollups')} ${only}`
  }
  if (source === 'monthly' && p.externalUserId === undefined && (groupBy === undefined || groupBy === 'day' || groupBy === 'task')) {
    return sql`${sql.unsafe(ORG_DAILY_ROWS)} where ${where(sql, p, source)}`
  }
  if (source === 'monthly' && groupBy !== 'day') {
    return sql`${monthlyAndDaily(sql, p.organizationId, p.from, p.to, p.externalUserId)} where true`
  }
  return sql`${sql.unsafe(SOURCE[source].table)} where ${where(sql, p, source)}`
}

/** Sums per group, as a query: await it, or `.cursor(n)` it to stream a large result. */
export function usageByGroup (sql: Sql, p: Period, groupBy: GroupBy, source: Source = 'events') {
  const s = SOURCE[source]
  const grouped = sql`
    select ${sql.unsafe(s.key[groupBy])} as key, ${sql.unsafe(groupBy === 'user' ? s.userId : 'null::text')} as user_id,
           ${sql.unsafe(s.sums)}, ${sql.unsafe(s.billed)} as billed_cost_usd_n,
           ${sql.unsafe(groupBy === 'group' ? 'count(distinct external_user_id)::int' : 'null::int')} as members
    from ${rowsOf(sql, p, source, groupBy)}
    group by 1`
  if (groupBy === 'user') {
    // Grouped by external id (the indexed column, and the rollups' key); the app's user id, name
    // and email come from user_mappings. The organization's own id stands for "no user".
    return sql<GroupRow[]>`
      select coalesce(g.user_id, m.user_id, nullif(g.key, ${p.organizationId})) as key, m.user_name, m.user_email, g.requests,
             g.prompt_tokens, g.completion_tokens, g.cached_tokens, g.reasoning_tokens, g.total_tokens, g.cost_usd, g.billed_cost_usd
      from (${grouped}) g
      left join user_mappings m on m.organization_id = ${p.organizationId} and m.external_user_id = g.key
      order by g.billed_cost_usd_n desc, g.requests desc, 1 nulls first`
  }
  // Days are grouped as dates and written as text once per group, not once per row.
  const key = groupBy === 'day' ? sql`to_char(key, 'YYYY-MM-DD') as key` : sql`key`
  const members = groupBy === 'group' ? sql`members,` : sql``
  return sql<GroupRow[]>`
    select ${key}, ${members} requests, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, total_tokens, cost_usd, billed_cost_usd
    from (${grouped}) g order by ${sql.unsafe(ORDER[groupBy])}`
}

/** The outcomes other than 'ok', from usage_events (a partial index holds just these rows). */
export function failedByOutcome (sql: Sql, p: Period) {
  const s = SOURCE.events
  return sql<GroupRow[]>`
    select outcome as key, ${sql.unsafe(s.sums)}
    from usage_events where ${where(sql, p, 'events')} and outcome <> 'ok'
      ${p.group === undefined ? sql`` : sql`and ${p.group} = any (groups)`}
    group by 1 order by 2 desc, 1`
}

/** The period's totals in one query: equal to the sum of any grouping's rows. */
export async function usageTotals (sql: Sql, p: Period, source: Source = 'events'): Promise<Sums> {
  const s = SOURCE[source]
  const [row] = await sql<Sums[]>`select ${sql.unsafe(s.sums)} from ${rowsOf(sql, p, source)}`
  return row
}

export interface EventFilter extends Period {
  model?: string
  outcome?: string
  /** Keyset: rows strictly older than this (created_at text, event_id). */
  before?: { createdAt: string, eventId: string }
  limit: number
}

export const EVENT_COLUMNS = ['event_id', 'generation_id', 'created_at', 'user_id', 'user_name', 'user_email', 'external_user_id',
  'endpoint', 'kind', 'model', 'served_model', 'provider', 'streamed', 'status', 'outcome', 'finish_reason', 'error_message',
  'usage_source', 'prompt_tokens', 'completion_tokens', 'cached_tokens', 'reasoning_tokens', 'total_tokens', 'cost_usd',
  'upstream_cost_usd', 'is_byok', 'markup_percent', 'billed_cost_usd', 'latency_ms', 'ttfb_ms', 'chat_id', 'message_id'] as const

export type EventRow = Record<(typeof EVENT_COLUMNS)[number], string | number | boolean | null>

/**
 * Raw rows, newest first; `created_at` is Postgres' own text so a cursor keeps every microsecond.
 * A model filter matches the model asked for or the model that answered. It is read as two scans
 * in (created_at, event_id) order, merged: rows asked for the model (index on organization, model,
 * created_at, event_id) and rows answered by it though another was asked for (a partial index of
 * only those rows, migration 009). The two never overlap. An `or` of both columns would walk the
 * whole period newest first, reading every row, when the model is rare.
 */
export function events (sql: Sql, f: EventFilter) {
  const outcome = f.outcome === undefined ? sql`` : sql`and e.outcome = ${f.outcome}`
  const before = f.before === undefined
    ? sql``
    : sql`and (e.created_at, e.event_id) < (${f.before.createdAt}::timestamptz, ${f.before.eventId}::uuid)`
  const user = f.externalUserId === undefined ? sql`` : sql`and e.external_user_id = ${f.externalUserId}`
  const rows = (model: ReturnType<Sql>) => sql`
    select e.* from usage_events e
    where e.organization_id = ${f.organizationId} and e.created_at >= ${f.from}::timestamptz and e.created_at < ${f.to}::timestamptz
      ${user} ${model} ${outcome} ${before}
    order by e.created_at desc, e.event_id desc
    limit ${f.limit}`
  const source = f.model === undefined
    ? rows(sql``)
    : sql`(${rows(sql`and e.model = ${f.model}`)})
          union all
          (${rows(sql`and e.served_model = ${f.model} and e.served_model is distinct from e.model`)})`
  return sql<EventRow[]>`
    select e.event_id::text, e.generation_id,
           to_char(e.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') as created_at,
           e.user_id, m.user_name, m.user_email, e.external_user_id, e.endpoint, e.kind, e.model, e.served_model, e.provider,
           e.streamed, e.status, e.outcome, e.finish_reason, e.error_message, e.usage_source,
           e.prompt_tokens, e.completion_tokens, e.cached_tokens, e.reasoning_tokens, e.total_tokens,
           e.cost_usd::text, e.upstream_cost_usd::text, e.is_byok, e.markup_percent::text, e.billed_cost_usd::text,
           e.latency_ms::text, e.ttfb_ms::text, e.chat_id, e.message_id
    from (${source}) e
    left join user_mappings m on m.organization_id = e.organization_id and m.user_id = e.user_id
    order by e.created_at desc, e.event_id desc
    limit ${f.limit}`
}

export interface StatementLine {
  organization_id: string
  organization_name: string
  user_id: string | null
  user_name: string | null
  user_email: string | null
  requests: number
  prompt_tokens: string
  completion_tokens: string
  total_tokens: string
  cost_usd: string
  markup_usd: string
  billed_cost_usd: string
}

/** One line per (organization, user) for a month; organizationId undefined: every organization. */
export function statementLines (sql: Sql, organizationId: string | undefined, from: string, to: string, source: Source = 'events') {
  const org = organizationId === undefined ? sql`` : sql`and organization_id = ${organizationId}`
  const s = SOURCE[source]
  const rows = source === 'monthly'
    ? monthlyAndDaily(sql, organizationId, from, to)
    : source === 'rollups'
      ? sql`${sql.unsafe(s.table)} where day >= ${from}::date and day < ${to}::date ${org}`
      : sql`${sql.unsafe(s.table)} where created_at >= ${from}::timestamptz and created_at < ${to}::timestamptz ${org}`
  return sql<StatementLine[]>`
    select g.organization_id, o.name as organization_name, coalesce(g.user_id, m.user_id, nullif(g.ext, g.organization_id)) as user_id,
           m.user_name, m.user_email, g.requests, g.prompt_tokens, g.completion_tokens, g.total_tokens, g.cost_usd,
           (g.billed_cost_usd::numeric - g.cost_usd::numeric)::text as markup_usd, g.billed_cost_usd
    from (
      select organization_id, external_user_id as ext, ${sql.unsafe(s.userId)} as user_id, ${sql.unsafe(s.sums)}
      from ${rows}
      group by 1, 2
    ) g
    join organizations o on o.id = g.organization_id
    left join user_mappings m on m.organization_id = g.organization_id and m.external_user_id = g.ext
    order by g.organization_id, g.billed_cost_usd::numeric desc, 3 nulls first`
}

export interface StatementGroupLine {
  organization_id: string
  group_id: string
  members: number
  requests: number
  prompt_tokens: string
  completion_tokens: string
  total_tokens: string
  cost_usd: string
  markup_usd: string
  billed_cost_usd: string
}

/**
 * One line per (organization, group) for a month: a request made by a member of several groups
 * is in each of those lines, so they are shown beside the statement's total, never summed into it.
 */
export function statementGroupLines (sql: Sql, organizationId: string | undefined, from: string, to: string, source: Source = 'events') {
  const org = organizationId === undefined ? sql`` : sql`and organization_id = ${organizationId}`
  const s = SOURCE[source]
  const rows = source === 'events'
    ? sql`usage_events cross join lateral unnest(groups) as g(group_id) where created_at >= ${from}::timestamptz and created_at < ${to}::timestamptz ${org}`
    : source === 'monthly'
      ? sql`${groupMonthlyAndDaily(sql, organizationId, from, to, sql``)} where true`
      : sql`${sql.unsafe(GROUP_DAILY_ROWS)} where day >= ${from}::date and day < ${to}::date ${org}`
  return sql<StatementGroupLine[]>`
    select organization_id, group_id, members, requests, prompt_tokens, completion_tokens, total_tokens, cost_usd,
           (billed_cost_usd::numeric - cost_usd::numeric)::text as markup_usd, billed_cost_usd
    from (
      select organization_id, ${sql.unsafe(s.key.group)} as group_id, count(distinct external_user_id)::int as members, ${sql.unsafe(s.sums)}
      from ${rows}
      group by 1, 2
    ) g
    order by organization_id, billed_cost_usd::numeric desc, group_id`
}

/** Exact totals straight from usage_events, per organization, to check a statement against. */
export function statementTotals (sql: Sql, organizationId: string | undefined, from: string, to: string) {
  const org = organizationId === undefined ? sql`` : sql`and organization_id = ${organizationId}`
  return sql<Array<{ organization_id: string, requests: number, cost_usd: string, billed_cost_usd: string }>>`
    select organization_id, count(*)::int as requests, coalesce(sum(cost_usd), 0)::text as cost_usd,
           coalesce(sum(billed_cost_usd), 0)::text as billed_cost_usd
    from usage_events where created_at >= ${from}::timestamptz and created_at < ${to}::timestamptz ${org}
    group by 1 order by 1`
}

/** Requests since an instant (for "requests today"), cheap on the (organization, user, created_at) index. */
export async function requestsSince (sql: Sql, organizationId: string, externalUserId: string, since: string): Promise<number> {
  const [row] = await sql<Array<{ n: number }>>`
    select count(*)::int as n from usage_events
    where organization_id = ${organizationId} and external_user_id = ${externalUserId} and created_at >= ${since}::timestamptz`
  return row.n
}

export function organizations (sql: Sql, organizationId: string | undefined) {
  const only = organizationId === undefined ? sql`` : sql`where id = ${organizationId}`
  return sql<Array<{ id: string, name: string, markup_percent: string }>>`select id, name, markup_percent::text from organizations ${only} order by id`
}
