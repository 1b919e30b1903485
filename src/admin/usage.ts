import type { ServerResponse } from 'node:http'
import { EVENT_COLUMNS, events, failedByOutcome, sumsSource, usageByGroup, usageTotals, type GroupBy, type GroupRow, type Period, type Sums } from '../usage/reports/usage-report.js'
import { totalsOf, withOkOutcome } from '../usage/reports/totals.js'
import { externalUserId } from '../identity/external-id.js'
import { sendError } from '../lib/errors.js'
import type { BudgetsFor, UserBudget } from '../budgets/status-for.js'
import { streamCsv } from './csv.js'
import { ParamError, encodeCursor, optionalGroup, optionalText, parseCursor, parseGroupBy, parseLimit, parsePeriod, wantsCsv } from './params.js'
import { sendJson, type AdminRequest, type AdminRoute } from './router.js'
import type { Sql } from '../db/connect.js'
import { trimDecimal, trimDecimalFields } from '../lib/decimal.js'

// GET /admin/v1/usage (sums per user, model, day, task, outcome or group, optionally of one
// group's rows) and GET /admin/v1/events (the raw rows, newest first), each as JSON or streamed CSV.

/** Said wherever the rows of group_by=group are shown: they overlap, the organization's total does not. */
export const GROUP_COUNTING_NOTE = 'A request made by a member of several groups counts in each of those groups\' rows; totals count it once, so the rows can add up to more than totals.'

export interface UsageDeps {
  organizationId: string
  /** ORGANIZATION_NAME, for the page's header. */
  organizationName: string
  readSql: () => Sql
  /** Every listed user's budget in one query (DATABASE_READ_URL when set). */
  budgetsFor: BudgetsFor
}

const SUM_COLUMNS = ['requests', 'prompt_tokens', 'completion_tokens', 'cached_tokens', 'reasoning_tokens', 'total_tokens', 'cost_usd', 'billed_cost_usd'] as const
const CURSOR_BATCH = 500
/** The events' decimal columns: written trimmed, as the sums are. */
const EVENT_DECIMALS = ['cost_usd', 'upstream_cost_usd', 'markup_percent', 'billed_cost_usd'] as const

export function usageRoutes (deps: UsageDeps): AdminRoute[] {
  return [
    { method: 'GET', path: /^\/admin\/v1\/usage\/?$/, handle: (r) => guarded(r.res, () => usage(deps, r)) },
    { method: 'GET', path: /^\/admin\/v1\/events\/?$/, handle: (r) => guarded(r.res, () => listEvents(deps, r)) },
  ]
}

async function guarded (res: ServerResponse, run: () => Promise<void>): Promise<void> {
  try {
    await run()
  } catch (err) {
    if (!(err instanceof ParamError)) throw err
    sendError(res, 400, 'invalid_request_error', 'invalid_parameter', err.message)
  }
}

/** The user filter as the indexed column: the organization's own id stands for "no user". */
function userFilter (deps: UsageDeps, q: URLSearchParams): { userId?: string, externalUserId?: string } {
  const user = optionalText(q, 'user')
  return user === undefined ? {} : { userId: user, externalUserId: externalUserId(deps.organizationId, user) }
}

async function usage (deps: UsageDeps, { req, res, url }: AdminRequest): Promise<void> {
  const q = url.searchParams
  const { from, to } = parsePeriod(q)
  const groupBy = parseGroupBy(q)
  const csv = wantsCsv(q, req.headers.accept)
  const { userId, externalUserId } = userFilter(deps, q)
  const group = optionalGroup(q)
  const period: Period = { organizationId: deps.organizationId, from, to, externalUserId, group }
  const sql = deps.readSql()
  const source = await sumsSource(sql, period)
  // The rollups keep no outcome: their totals, minus the few rows that did not end 'ok'.
  const outcomes = groupBy === 'outcome' && source !== 'events'
    ? async (): Promise<GroupRow[]> => {
      // One snapshot, so a row written in between is in both reads or in neither.
      const [totals, failed] = await sql.begin('isolation level repeatable read read only', (t) => {
        const tx = t as unknown as Sql
        return [usageTotals(tx, period, source), failedByOutcome(tx, period)]
      }) as unknown as [Sums, GroupRow[]]
      return withOkOutcome(totals, failed)
    }
    : null
  const keyColumns = groupBy === 'user' ? ['user', 'user_name', 'user_email'] : groupBy === 'group' ? ['group', 'members'] : [groupBy]
  const keyFields = (row: GroupRow): unknown[] =>
    groupBy === 'user' ? [row.key, row.user_name, row.user_email] : groupBy === 'group' ? [row.key, row.members] : [row.key]
  if (csv) {
    const name = `usage-${groupBy}-${from}-${to}${userId === undefined ? '' : '-user'}${group === undefined ? '' : '-group'}.csv`
    return streamCsv(res, name, [...keyColumns, ...SUM_COLUMNS], outcomes ? once(outcomes()) : usageByGroup(sql, period, groupBy, source).cursor(CURSOR_BATCH),
      (row) => [...keyFields(row), ...SUM_COLUMNS.map((c) => exactSum(row[c]))])
  }
  // Per group, the rows overlap (a request in two groups is in both): the totals are the
  // organization's (or the user's), read in the same snapshot, each request once.
  const overlapping = groupBy === 'group' && group === undefined
  const [rows, whole] = overlapping
    ? await sql.begin('isolation level repeatable read read only', (t) => {
      const tx = t as unknown as Sql
      return [usageByGroup(tx, period, groupBy, source), usageTotals(tx, period, source)]
    }) as unknown as [GroupRow[], Sums]
    : [outcomes ? await outcomes() : await usageByGroup(sql, period, groupBy, source), null]
  // Summed before trimming: a sum of trimmed values can end in zeros again (0.15 + 0.05).
  const totals = trimDecimalFields(whole ?? totalsOf(rows), SUM_COLUMNS)
  // Per user: every budget of the page in one read, however many users it lists.
  const budgets = groupBy === 'user' ? await deps.budgetsFor(rows.flatMap((r) => r.key === null ? [] : [r.key])) : null
  const data = rows.map((row) => shape(groupBy, row, budgets))
  sendJson(res, 200, {
    object: 'usage', organization: deps.organizationId, organization_name: deps.organizationName, from, to, group_by: groupBy,
    ...(userId === undefined ? {} : { user: userId }), ...(group === undefined ? {} : { group }),
    data, totals, ...(overlapping ? { note: GROUP_COUNTING_NOTE } : {}),
  })
}

async function * once<T> (rows: Promise<T[]>): AsyncIterable<T[]> { yield await rows }

function shape (groupBy: GroupBy, row: GroupRow, budgets: Map<string, UserBudget> | null): Record<string, unknown> {
  const sums = Object.fromEntries(SUM_COLUMNS.map((c) => [c, exactSum(row[c])]))
  if (groupBy === 'group') return { group: row.key, members: row.members ?? 0, ...sums }
  if (groupBy !== 'user') return { [groupBy]: row.key, ...sums }
  const budget = row.key === null ? null : budgets?.get(row.key) ?? null
  return { user: row.key, user_name: row.user_name ?? null, user_email: row.user_email ?? null, ...sums, budget }
}

function exactSum (v: string | number): string | number {
  return typeof v === 'string' ? trimDecimal(v) : v
}

async function listEvents (deps: UsageDeps, { req, res, url }: AdminRequest): Promise<void> {
  const q = url.searchParams
  const { from, to } = parsePeriod(q)
  const limit = parseLimit(q)
  const csv = wantsCsv(q, req.headers.accept)
  const filter = {
    organizationId: deps.organizationId, from, to, externalUserId: userFilter(deps, q).externalUserId,
    model: optionalText(q, 'model'), outcome: optionalText(q, 'outcome'), before: parseCursor(q),
  }
  const sql = deps.readSql()
  if (csv) {
    return streamCsv(res, `events-${from}-${to}.csv`, EVENT_COLUMNS, events(sql, { ...filter, limit }).cursor(CURSOR_BATCH),
      (row) => { const r = trimDecimalFields(row, EVENT_DECIMALS); return EVENT_COLUMNS.map((c) => r[c]) })
  }
  // One row more than asked tells whether another page exists.
  const rows = await events(sql, { ...filter, limit: limit + 1 })
  const page = rows.slice(0, limit).map((r) => trimDecimalFields(r, EVENT_DECIMALS))
  const last = page.at(-1)
  const more = rows.length > limit
  sendJson(res, 200, {
    object: 'list', data: page, has_more: more,
    next_cursor: more && last ? encodeCursor(String(last.created_at), String(last.event_id)) : null,
  })
}
