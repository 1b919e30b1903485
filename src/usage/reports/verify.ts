import type { Sql } from '../../db/connect.js'

// `usage-proxy verify`: recomputes the daily rollups from the raw rows, with the SQL that defines
// them (usage_rollup_select in sql/007), and lists every rollup row that differs. The rollups
// compared are usage_daily_totals: folded rows plus the deltas not folded yet, as readers see them. Days
// whose raw rows retention dropped are not compared: their rollups are all that is left.
// The coarser rollups of migration 009 (usage_monthly_totals, usage_org_daily_totals) are compared
// with the raw rows of the days that still have them plus the daily rollups of the days retention
// dropped: a corrupted monthly row is named as such, and a corrupted daily row only as itself.

export const ROLLUP_VALUES = [
  'requests', 'failed_or_aborted', 'prompt_tokens', 'completion_tokens', 'total_tokens', 'cached_tokens',
  'reasoning_tokens', 'cost_usd', 'upstream_cost_usd', 'billed_cost_usd', 'user_id',
] as const

export interface RollupDifference {
  /** daily: a usage_daily_totals row against the raw rows; monthly: a usage_monthly_totals row against the daily rows of its month. */
  rollup: 'daily' | 'monthly' | 'org_daily' | 'group_daily' | 'group_monthly'
  organizationId: string
  /** The group, for a group rollup's row (migration 023). */
  groupId?: string
  /** The day, or for a monthly row its month's first day. */
  day: string
  externalUserId: string
  model: string
  kind: string
  /** Column -> [in the rollup, recomputed from raw rows]; null when that side has no row. */
  values: Record<string, [string | null, string | null]>
}

export interface VerifyResult {
  from: string | null
  to: string | null
  rollupRows: number
  rawRows: number
  /** Monthly rollup rows compared; null when the database has none (before migration 009). */
  monthlyRows: number | null
  /** Per-organization day rows compared; null before migration 009. */
  orgDailyRows: number | null
  /** Group day and month rows compared (folded rows plus deltas); null before migration 023. */
  groupDailyRows: number | null
  groupMonthlyRows: number | null
  differences: RollupDifference[]
  /** Requests interrupted before OpenRouter named their generation (not a difference: listed for the operator). */
  interrupted: EstimateOnly
}

/**
 * Rows of requests the sidecar sent (or was about to send) and never saw end, whose generation id
 * it never learned (a crash mid-request): their cost is unknown to anyone but OpenRouter's
 * invoice. Budgets count them at the estimate; billing sees no cost.
 */
export interface EstimateOnly {
  /** How many such rows in the range, and the sum of their estimates (exact USD). */
  count: number
  estimateTotalUsd: string
  /** The first `limit` of them, oldest first. */
  rows: Array<{ eventId: string, createdAt: string, organizationId: string, externalUserId: string | null, model: string | null, endpoint: string | null, streamed: boolean, estimatedCostUsd: string | null }>
}

/** `YYYY-MM` -> [first day, first day of the next month]; throws on anything else. */
export function monthRange (month: string): [string, string] {
  const m = /^(\d{4})-(0[1-9]|1[0-2])$/.exec(month)
  if (!m) throw new Error(`--month must be YYYY-MM, got ${JSON.stringify(month)}`)
  const y = Number(m[1])
  const mo = Number(m[2])
  const next = mo === 12 ? `${y + 1}-01-01` : `${y}-${String(mo + 1).padStart(2, '0')}-01`
  return [`${month}-01`, next]
}

export async function verifyRollups (sql: Sql, opts: { month?: string, limit?: number } = {}): Promise<VerifyResult> {
  const [from, to] = opts.month ? monthRange(opts.month) : [null, null]
  const limit = opts.limit ?? 1000
  // Raw rows are retained from the oldest monthly partition on (or older rows left in the default).
  const [{ retained }] = await sql<{ retained: string | null }[]>`
    select least(
      (select min(to_date(substr(c.relname, 14), 'YYYY_MM')) from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'usage_events'::regclass and c.relname ~ '^usage_events_\\d{4}_\\d{2}$'),
      (select (min(created_at) at time zone 'UTC')::date from usage_events_default))::text as retained`
  const lo = [from, retained].filter((d): d is string => d !== null).sort().at(-1) ?? null
  const rawSource = `(select * from usage_events where ($1::date is null or created_at >= ($1::date::text || ' 00:00:00+00')::timestamptz)
    and ($2::date is null or created_at < ($2::date::text || ' 00:00:00+00')::timestamptz)) e`
  const [{ q }] = await sql<{ q: string }[]>`select usage_rollup_select(${rawSource}) as q`
  const cols = ROLLUP_VALUES.map((c) => `r.${c}::text as r_${c}, x.${c}::text as x_${c}, r.${c} is distinct from x.${c} as d_${c}`).join(', ')
  const differs = ROLLUP_VALUES.map((c) => `r.${c} is distinct from x.${c}`).join(' or ')
  const rows = await sql.unsafe(`
    with raw as (${q}),
    rollup as (select * from usage_daily_totals where ($1::date is null or day >= $1::date) and ($2::date is null or day < $2::date))
    select coalesce(r.organization_id, x.organization_id) as organization_id, coalesce(r.day, x.day)::text as day,
           coalesce(r.external_user_id, x.external_user_id) as external_user_id, coalesce(r.model, x.model) as model,
           coalesce(r.kind, x.kind) as kind, r.day is not null as in_rollup, x.day is not null as in_raw, ${cols}
    from rollup r full join raw x using (organization_id, day, external_user_id, model, kind)
    where ${differs}
    order by 1, 2, 3, 4, 5
    limit ${Number(limit)}`, [lo, to])
  const [{ rollups, raw }] = await sql<{ rollups: number, raw: number }[]>`
    select (select count(*) from usage_daily_totals where (${lo}::date is null or day >= ${lo}::date) and (${to}::date is null or day < ${to}::date))::int as rollups,
           (select count(*) from usage_events where (${lo}::date is null or created_at >= (${lo}::date::text || ' 00:00:00+00')::timestamptz)
             and (${to}::date is null or created_at < (${to}::date::text || ' 00:00:00+00')::timestamptz))::int as raw`
  const interrupted = await estimateOnly(sql, from, to, limit)
  const monthly = await verifyCoarse(sql, COARSE[0], q, from, lo, to, limit)
  const orgDaily = await verifyCoarse(sql, COARSE[1], q, from, lo, to, limit)
  const groups = await verifyGroups(sql, from, lo, to, limit)
  return {
    from: lo,
    to,
    rollupRows: rollups,
    rawRows: raw,
    monthlyRows: monthly?.rows ?? null,
    orgDailyRows: orgDaily?.rows ?? null,
    groupDailyRows: groups?.dailyRows ?? null,
    groupMonthlyRows: groups?.monthlyRows ?? null,
    differences: [...rows.map((r) => differenceOf('daily', r)), ...(monthly?.differences ?? []), ...(orgDaily?.differences ?? []),
      ...(groups?.differences ?? [])].slice(0, limit),
    interrupted,
  }
}

/** The estimate-only rows of [from, to) (or all): outcome 'interrupted', no generation id, no cost. */
export async function estimateOnly (sql: Sql, from: string | null, to: string | null, limit = 1000): Promise<EstimateOnly> {
  const range = sql`outcome = 'interrupted' and generation_id is null and cost_usd is null
    and (${from}::date is null or created_at >= (${from}::date::text || ' 00:00:00+00')::timestamptz)
    and (${to}::date is null or created_at < (${to}::date::text || ' 00:00:00+00')::timestamptz)`
  const [{ n, total }] = await sql<Array<{ n: number, total: string }>>`
    select count(*)::int as n, coalesce(sum(estimated_cost_usd), 0)::text as total from usage_events where ${range}`
  const rows = await sql<Array<{ event_id: string, created_at: Date, organization_id: string, external_user_id: string | null, model: string | null, endpoint: string | null, streamed: boolean, estimate: string | null }>>`
    select event_id::text, created_at, organization_id, external_user_id, model, endpoint, streamed, estimated_cost_usd::text as estimate
    from usage_events where ${range} order by created_at, event_id limit ${limit}`
  return {
    count: n,
    estimateTotalUsd: total,
    rows: rows.map((r) => ({ eventId: r.event_id, createdAt: r.created_at.toISOString(), organizationId: r.organization_id, externalUserId: r.external_user_id, model: r.model, endpoint: r.endpoint, streamed: r.streamed, estimatedCostUsd: r.estimate })),
  }
}

/** One line per estimate-only row, for the command line. */
export function formatEstimateOnly (r: EstimateOnly['rows'][number]): string {
  return `interrupted ${r.createdAt} event=${r.eventId} ${r.organizationId} user=${r.externalUserId ?? '(none)'} model=${r.model ?? '(none)'} ` +
    `${r.streamed ? 'stream' : 'non-stream'}: no generation id, cost unknown; ${r.estimatedCostUsd === null ? 'no estimate (no budget applied)' : `counted at the estimate $${r.estimatedCostUsd}`}`
}

function differenceOf (rollup: RollupDifference['rollup'], r: Record<string, unknown>): RollupDifference {
  return {
    rollup,
    organizationId: r.organization_id as string,
    ...(r.group_id === undefined ? {} : { groupId: r.group_id as string }),
    day: r.day as string,
    externalUserId: r.external_user_id as string,
    model: r.model as string,
    kind: r.kind as string,
    values: Object.fromEntries(ROLLUP_VALUES
      .filter((c) => r[`d_${c}`] === true)
      .map((c) => [c, [r.in_rollup ? r[`r_${c}`] as string | null : null, r.in_raw ? r[`x_${c}`] as string | null : null]])),
  }
}

interface Coarse {
  rollup: 'monthly' | 'org_daily'
  view: string
  /** The view's date column, and that column computed from a day. */
  date: string
  dateOf: string
  /** Key columns after organization and date; those the view lacks are read as ''. */
  keys: Array<'external_user_id' | 'model' | 'kind'>
}

const COARSE: Coarse[] = [
  { rollup: 'monthly', view: 'usage_monthly_totals', date: 'month', dateOf: "date_trunc('month', day::timestamp)::date", keys: ['external_user_id', 'model', 'kind'] },
  { rollup: 'org_daily', view: 'usage_org_daily_totals', date: 'day', dateOf: 'day', keys: ['kind'] },
]

/**
 * A coarser rollup (migration 009) of [from, to) (or all of it) against the days it sums: raw rows
 * from `lo` on (`raw`, the daily rollups' definition over $1 = lo, $2 = to), daily rollups before.
 */
async function verifyCoarse (sql: Sql, c: Coarse, raw: string, from: string | null, lo: string | null, to: string | null, limit: number):
Promise<{ rows: number, differences: RollupDifference[] } | null> {
  const [{ present }] = await sql<{ present: boolean }[]>`select to_regclass(${c.view}) is not null as present`
  if (!present) return null
  const values = ROLLUP_VALUES.filter((v) => c.rollup === 'monthly' || v !== 'user_id')
  const sums = values.map((v) => v === 'user_id' ? 'max(user_id) as user_id' : `sum(${v}) as ${v}`).join(', ')
  const cols = values.map((v) => `r.${v}::text as r_${v}, x.${v}::text as x_${v}, r.${v} is distinct from x.${v} as d_${v}`).join(', ')
  const differs = values.map((v) => `r.${v} is distinct from x.${v}`).join(' or ')
  const keys = ['organization_id', c.date, ...c.keys]
  const key = (k: string) => c.keys.includes(k as Coarse['keys'][number]) ? `coalesce(r.${k}, x.${k})` : "''"
  const rows = await sql.unsafe(`
    with days as (
      select * from (${raw}) x where $1::date is not null
      union all
      select * from usage_daily_totals where ($3::date is null or day >= $3::date) and ($1::date is null or day < $1::date)
        and ($2::date is null or day < $2::date)),
    expected as (
      select organization_id, ${c.dateOf} as ${c.date}, ${c.keys.join(', ')}, ${sums}
      from days group by ${keys.map((_, i) => i + 1).join(', ')}),
    rollup as (select * from ${c.view} where ($3::date is null or ${c.date} >= $3::date) and ($2::date is null or ${c.date} < $2::date))
    select coalesce(r.organization_id, x.organization_id) as organization_id, coalesce(r.${c.date}, x.${c.date})::text as day,
           ${key('external_user_id')} as external_user_id, ${key('model')} as model, ${key('kind')} as kind,
           r.${c.date} is not null as in_rollup, x.${c.date} is not null as in_raw, ${cols}
    from rollup r full join expected x using (${keys.join(', ')})
    where ${differs}
    order by 1, 2, 3, 4, 5
    limit ${Number(limit)}`, [lo, to, from])
  const [{ n }] = await sql.unsafe<{ n: number }[]>(`
    select count(*)::int as n from ${c.view} where ($1::date is null or ${c.date} >= $1::date) and ($2::date is null or ${c.date} < $2::date)`, [from, to])
  return { rows: n, differences: rows.map((r) => differenceOf(c.rollup, r)) }
}

const GROUP_KEY = 'organization_id, day, group_id, external_user_id, model, kind'
const groupSums = (values: readonly string[]): string =>
  values.map((v) => v === 'user_id' ? 'max(user_id) as user_id' : `sum(${v}) as ${v}`).join(', ')

/**
 * The group rollups (migration 023), as readers see them (folded rows plus the deltas not folded
 * yet): each group day against the raw rows of that day in the group (from `lo` on, where raw rows
 * are kept), with the definition the insert trigger uses (sql/functions/3-usage-after-insert.sql),
 * and each folded group month against the folded group days of its month (the deltas are the
 * same on both sides).
 */
async function verifyGroups (sql: Sql, from: string | null, lo: string | null, to: string | null, limit: number):
Promise<{ dailyRows: number, monthlyRows: number, differences: RollupDifference[] } | null> {
  const [{ present }] = await sql<{ present: boolean }[]>`select to_regclass('usage_group_daily_rollups') is not null as present`
  if (!present) return null
  const cols = ROLLUP_VALUES.map((v) => `r.${v}::text as r_${v}, x.${v}::text as x_${v}, r.${v} is distinct from x.${v} as d_${v}`).join(', ')
  const differs = ROLLUP_VALUES.map((v) => `r.${v} is distinct from x.${v}`).join(' or ')
  const pick = (date: string) => `coalesce(r.organization_id, x.organization_id) as organization_id, coalesce(r.${date}, x.${date})::text as day,
    coalesce(r.group_id, x.group_id) as group_id, coalesce(r.external_user_id, x.external_user_id) as external_user_id,
    coalesce(r.model, x.model) as model, coalesce(r.kind, x.kind) as kind, r.${date} is not null as in_rollup, x.${date} is not null as in_raw, ${cols}`
  const daily = await sql.unsafe(`
    with raw as (
      select organization_id, (created_at at time zone 'UTC')::date as day, g.group_id, external_user_id,
             coalesce(served_model, model, '') as model, kind, count(*) as requests,
             count(*) filter (where outcome <> 'ok') as failed_or_aborted,
             coalesce(sum(prompt_tokens), 0) as prompt_tokens, coalesce(sum(completion_tokens), 0) as completion_tokens,
             coalesce(sum(total_tokens), 0) as total_tokens, coalesce(sum(cached_tokens), 0) as cached_tokens,
             coalesce(sum(reasoning_tokens), 0) as reasoning_tokens, coalesce(sum(cost_usd), 0) as cost_usd,
             coalesce(sum(upstream_cost_usd), 0) as upstream_cost_usd, coalesce(sum(billed_cost_usd), 0) as billed_cost_usd,
             max(user_id) as user_id
      from usage_events e cross join lateral unnest(e.groups) as g(group_id)
      where cardinality(e.groups) > 0
        and ($1::date is null or created_at >= ($1::date::text || ' 00:00:00+00')::timestamptz)
        and ($2::date is null or created_at < ($2::date::text || ' 00:00:00+00')::timestamptz)
      group by 1, 2, 3, 4, 5, 6),
    rollup as (
      select ${GROUP_KEY}, ${groupSums(ROLLUP_VALUES)}
      from (select * from usage_group_daily_rollups union all select * from usage_group_rollup_deltas) u
      where ($1::date is null or day >= $1::date) and ($2::date is null or day < $2::date)
      group by 1, 2, 3, 4, 5, 6)
    select ${pick('day')}
    from rollup r full join raw x using (${GROUP_KEY})
    where ${differs}
    order by 1, 2, 3, 4, 5, 6
    limit ${Number(limit)}`, [lo, to])
  const monthly = await sql.unsafe(`
    with rollup as (
      select * from usage_group_monthly_rollups where ($1::date is null or month >= $1::date) and ($2::date is null or month < $2::date)),
    days as (
      select organization_id, date_trunc('month', day::timestamp)::date as month, group_id, external_user_id, model, kind, ${groupSums(ROLLUP_VALUES)}
      from usage_group_daily_rollups
      where ($1::date is null or day >= date_trunc('month', $1::date::timestamp)::date) and ($2::date is null or day < $2::date)
      group by 1, 2, 3, 4, 5, 6)
    select ${pick('month')}
    from rollup r full join days x using (organization_id, month, group_id, external_user_id, model, kind)
    where ${differs}
    order by 1, 2, 3, 4, 5, 6
    limit ${Number(limit)}`, [from, to])
  const [{ d, m }] = await sql<{ d: number, m: number }[]>`select
    (select count(*) from usage_group_daily_rollups where (${lo}::date is null or day >= ${lo}::date) and (${to}::date is null or day < ${to}::date))::int as d,
    (select count(*) from usage_group_monthly_rollups where (${from}::date is null or month >= ${from}::date) and (${to}::date is null or month < ${to}::date))::int as m`
  return {
    dailyRows: d,
    monthlyRows: m,
    differences: [...daily.map((r) => differenceOf('group_daily', r)), ...monthly.map((r) => differenceOf('group_monthly', r))],
  }
}

/** One line per difference, for the command line. */
export function formatDifference (d: RollupDifference): string {
  const model = d.model === '' ? '(none)' : d.model
  if (d.rollup === 'group_daily' || d.rollup === 'group_monthly') {
    const against = d.rollup === 'group_daily' ? 'raw' : 'its days'
    const what = Object.entries(d.values).map(([c, [a, b]]) => `${c}: group rollup ${a ?? '(no row)'} != ${against} ${b ?? '(no row)'}`).join('; ')
    const when = d.rollup === 'group_daily' ? d.day : `month ${d.day.slice(0, 7)}`
    return `${d.organizationId} ${when} group=${d.groupId ?? ''} user=${d.externalUserId} model=${model} kind=${d.kind}: ${what}`
  }
  if (d.rollup !== 'daily') {
    const what = Object.entries(d.values).map(([c, [a, b]]) => `${c}: ${d.rollup} rollup ${a ?? '(no row)'} != its days ${b ?? '(no row)'}`).join('; ')
    return d.rollup === 'monthly'
      ? `${d.organizationId} month ${d.day.slice(0, 7)} user=${d.externalUserId} model=${model} kind=${d.kind}: ${what}`
      : `${d.organizationId} ${d.day} (organization's day) kind=${d.kind}: ${what}`
  }
  const what = Object.entries(d.values).map(([c, [a, b]]) => `${c}: rollup ${a ?? '(no row)'} != raw ${b ?? '(no row)'}`).join('; ')
  return `${d.organizationId} ${d.day} user=${d.externalUserId} model=${model} kind=${d.kind}: ${what}`
}
