import { adminGroupId } from '../identity/groups.js'
import { GROUP_BYS, type GroupBy } from '../usage/reports/usage-report.js'

// Query parameters of the usage API, checked before any query runs. A bad one answers 400
// naming the parameter; nothing is guessed.

export class ParamError extends Error {
  constructor (readonly param: string, message: string) { super(message) }
}

const DAY = /^(\d{4})-(\d{2})-(\d{2})$/

/** A real calendar day as YYYY-MM-DD, or a ParamError naming the parameter. */
export function parseDay (param: string, v: string): string {
  const m = DAY.exec(v)
  if (m) {
    const d = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])))
    if (d.toISOString().slice(0, 10) === v) return v
  }
  throw new ParamError(param, `${param} must be a date as YYYY-MM-DD (UTC), got ${JSON.stringify(v)}`)
}

export function monthStart (d: Date, plusMonths = 0): string {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + plusMonths, 1)).toISOString().slice(0, 10)
}

/** `from` inclusive, `to` exclusive; by default the current UTC month. */
export function parsePeriod (q: URLSearchParams, now = new Date()): { from: string, to: string } {
  const fromText = q.get('from')
  const toText = q.get('to')
  const to = toText ? parseDay('to', toText) : monthStart(now, 1)
  const from = fromText ? parseDay('from', fromText) : (toText ? monthStart(new Date(Date.parse(to) - 86_400_000)) : monthStart(now))
  if (from >= to) throw new ParamError('to', `to (${to}) must be after from (${from}): from is inclusive, to exclusive`)
  return { from, to }
}

export function parseGroupBy (q: URLSearchParams): GroupBy {
  const v = q.get('group_by') ?? 'day'
  if ((GROUP_BYS as readonly string[]).includes(v)) return v as GroupBy
  throw new ParamError('group_by', `group_by must be one of ${GROUP_BYS.join(', ')}, got ${JSON.stringify(v)}`)
}

export function parseLimit (q: URLSearchParams, def = 100, max = 1000): number {
  const v = q.get('limit')
  if (v === null || v === '') return def
  if (!/^\d{1,7}$/.test(v) || Number(v) < 1 || Number(v) > max) throw new ParamError('limit', `limit must be an integer from 1 to ${max}`)
  return Number(v)
}

/** json unless format=csv or the client accepts text/csv (and did not ask for json). */
export function wantsCsv (q: URLSearchParams, accept: string | undefined): boolean {
  const f = q.get('format')
  if (f === 'csv') return true
  if (f === 'json') return false
  if (f !== null) throw new ParamError('format', `format must be json or csv, got ${JSON.stringify(f)}`)
  return typeof accept === 'string' && /(^|,)\s*text\/csv\b/i.test(accept)
}

/** Optional free-text filter: absent, or 1-500 characters. */
export function optionalText (q: URLSearchParams, param: string): string | undefined {
  const v = q.get(param)
  if (v === null) return undefined
  // NUL included: Postgres text cannot hold it, and the query would fail as a 500.
  if (v === '' || v.length > 500 || v.includes('\u0000')) throw new ParamError(param, `${param} must be 1-500 characters, without NUL`)
  return v
}

/** `group=ID`: read as the request's group header is (identity/groups.ts), so any spelling finds the group. */
export function optionalGroup (q: URLSearchParams): string | undefined {
  const v = optionalText(q, 'group')
  if (v === undefined) return undefined
  const g = adminGroupId(v)
  if ('error' in g) throw new ParamError('group', g.error)
  return g.id
}

const CURSOR_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

export function encodeCursor (createdAt: string, eventId: string): string {
  return Buffer.from(`${createdAt}|${eventId}`).toString('base64url')
}

export function parseCursor (q: URLSearchParams): { createdAt: string, eventId: string } | undefined {
  const v = q.get('cursor')
  if (v === null || v === '') return undefined
  const [createdAt, eventId] = Buffer.from(v, 'base64url').toString('utf8').split('|')
  if (!CURSOR_TIME.test(createdAt ?? '') || !UUID.test(eventId ?? '')) throw new ParamError('cursor', 'cursor is not one this API returned (use next_cursor as given)')
  return { createdAt, eventId }
}
