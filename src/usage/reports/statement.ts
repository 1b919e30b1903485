import { writeFileSync } from 'node:fs'
import postgres from 'postgres'
import { loadDatabaseConfig } from '../../config/config.js'
import { poolOptions, type Sql } from '../../db/connect.js'
import { startEmbedded, type EmbeddedDb } from '../../db/embedded.js'
import { organizations, statementGroupLines, statementLines, statementTotals, sumsSource, type StatementGroupLine, type StatementLine } from './usage-report.js'
import { createLogger } from '../../lib/log.js'
import { roundDecimal, sameDecimal, sumDecimals } from '../../lib/decimal.js'
import { trimDecimal, trimDecimalFields } from '../../lib/decimal.js'

// `usage-proxy statement --month YYYY-MM`: the reseller's monthly statement, one line per user
// with requests, tokens, cost, markup and billed cost. The lines and the totals are read in one
// snapshot, and the total printed is checked to equal both the sum of the lines and the sum over
// usage_events: a statement that does not add up is refused, never printed. Every amount is exact,
// written without trailing zeros; the Markdown, the document handed to a client, adds the invoice
// total rounded to the cent once, on the total, with the exact amount in a footnote. Below it, a
// section per group (Open WebUI groups): a request made by a member of several groups counts in
// each of them, so those lines are not part of the total and the statement says so.

export class StatementError extends Error {}

export interface OrganizationStatement {
  id: string
  name: string
  markup_percent: string
  lines: StatementLine[]
  /** Spend per group, beside the total: a request in several groups is in each group's line. */
  groups: Array<Omit<StatementGroupLine, 'organization_id'>>
  total: { requests: number, prompt_tokens: string, completion_tokens: string, total_tokens: string, cost_usd: string, markup_usd: string, billed_cost_usd: string }
  /** The billed total rounded half up to the cent, once: what the invoice says. */
  invoice_total_usd: string
}

export interface Statement { month: string, from: string, to: string, organizations: OrganizationStatement[] }

type Format = 'csv' | 'json' | 'md'

interface Options { month: string, format: Format, out: string | undefined, all: boolean }

function parseArgs (args: string[]): Options {
  const o: Partial<Options> & { all: boolean } = { all: false, format: 'md' }
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].startsWith('--') && args[i].includes('=') ? [args[i].slice(0, args[i].indexOf('=')), args[i].slice(args[i].indexOf('=') + 1)] : [args[i], undefined]
    const value = (): string => {
      const v = inline ?? args[++i]
      if (v === undefined) throw new StatementError(`${flag} needs a value`)
      return v
    }
    if (flag === '--month') o.month = value()
    else if (flag === '--format') o.format = value() as Format
    else if (flag === '--out') o.out = value()
    else if (flag === '--all-organizations') o.all = true
    else throw new StatementError(`statement: unknown argument ${args[i]}`)
  }
  if (o.month === undefined) throw new StatementError('statement needs --month YYYY-MM')
  if (!/^\d{4}-(0[1-9]|1[0-2])$/.test(o.month)) throw new StatementError(`--month must be YYYY-MM, got ${JSON.stringify(o.month)}`)
  if (!['csv', 'json', 'md'].includes(o.format!)) throw new StatementError(`--format must be csv, json or md, got ${JSON.stringify(o.format)}`)
  return o as Options
}

export function monthRange (month: string): { from: string, to: string } {
  const [y, m] = month.split('-').map(Number)
  return { from: `${month}-01`, to: new Date(Date.UTC(y, m, 1)).toISOString().slice(0, 10) }
}

/** Reads one month for one organization (or all of them) in a single snapshot, and checks that it adds up. */
export async function buildStatement (sql: Sql, organizationId: string | undefined, month: string): Promise<Statement> {
  const { from, to } = monthRange(month)
  // The lines from the rollups when there are any, the check always from usage_events.
  const source = await sumsSource(sql, { organizationId: organizationId ?? '', from, to })
  const [orgs, lines, totals, groupLines] = await sql.begin('isolation level repeatable read read only', (t) => {
    const tx = t as unknown as Sql // the same query interface; the types differ only in pool controls
    return [organizations(tx, organizationId), statementLines(tx, organizationId, from, to, source), statementTotals(tx, organizationId, from, to),
      statementGroupLines(tx, organizationId, from, to, source)]
  }) as unknown as [
    Awaited<ReturnType<typeof organizations>>, StatementLine[], Awaited<ReturnType<typeof statementTotals>>, StatementGroupLine[]]
  if (organizationId !== undefined && orgs.length === 0) throw new StatementError(`no organization ${organizationId} in this database`)
  const out = orgs.map((org): OrganizationStatement => {
    const mine = lines.filter((l) => l.organization_id === org.id)
    const direct = totals.find((t) => t.organization_id === org.id) ?? { requests: 0, cost_usd: '0', billed_cost_usd: '0' }
    const total = {
      requests: mine.reduce((n, l) => n + l.requests, 0),
      prompt_tokens: sumDecimals(['0', ...mine.map((l) => l.prompt_tokens)]),
      completion_tokens: sumDecimals(['0', ...mine.map((l) => l.completion_tokens)]),
      total_tokens: sumDecimals(['0', ...mine.map((l) => l.total_tokens)]),
      cost_usd: sumDecimals(['0', ...mine.map((l) => l.cost_usd)]),
      markup_usd: sumDecimals(['0', ...mine.map((l) => l.markup_usd)]),
      billed_cost_usd: sumDecimals(['0', ...mine.map((l) => l.billed_cost_usd)]),
    }
    if (total.requests !== direct.requests || !sameDecimal(total.cost_usd, direct.cost_usd) || !sameDecimal(total.billed_cost_usd, direct.billed_cost_usd)) {
      throw new StatementError(`${org.id}: the lines add up to ${total.billed_cost_usd} billed over ${total.requests} requests, usage_events to ${direct.billed_cost_usd} over ${direct.requests}: not printing a statement that does not add up`)
    }
    // Trimmed after summing: a sum of trimmed amounts can end in zeros again (0.15 + 0.05).
    return {
      id: org.id, name: org.name, markup_percent: trimDecimal(org.markup_percent),
      lines: mine.map((l) => trimDecimalFields(l, AMOUNTS)),
      groups: groupLines.filter((g) => g.organization_id === org.id).map(({ organization_id: _org, ...g }) => trimDecimalFields(g, AMOUNTS)),
      total: trimDecimalFields(total, AMOUNTS),
      invoice_total_usd: roundDecimal(total.billed_cost_usd, 2),
    }
  })
  return { month, from, to, organizations: out }
}

const AMOUNTS = ['prompt_tokens', 'completion_tokens', 'total_tokens', 'cost_usd', 'markup_usd', 'billed_cost_usd'] as const

const CSV_COLUMNS = ['line', 'organization_id', 'organization_name', 'user_id', 'user_name', 'user_email', 'requests', 'prompt_tokens',
  'completion_tokens', 'total_tokens', 'cost_usd', 'markup_usd', 'billed_cost_usd', 'group_id', 'members'] as const

/** Said beside every group section: the group lines overlap, the total does not. */
export const GROUPS_NOTE = 'A request made by a member of several groups counts in each of those groups\' lines; the total above counts it once, so the group lines are not added to it.'

function csvField (v: unknown): string {
  const raw = v === null || v === undefined ? '' : String(v)
  // A user name that starts like a formula must not run as one in a spreadsheet (as src/admin/csv.ts).
  const s = /^[=+@\t\r]|^-(?!\d*\.?\d+$)/.test(raw) ? `'${raw}` : raw
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s
}

export function render (s: Statement, format: Format): string {
  if (format === 'json') return JSON.stringify(s, null, 2) + '\n'
  if (format === 'csv') {
    const rows: unknown[][] = [[...CSV_COLUMNS]]
    for (const org of s.organizations) {
      for (const l of org.lines) rows.push(['user', ...CSV_COLUMNS.slice(1).map((c) => (l as unknown as Record<string, unknown>)[c])])
      rows.push(['total', org.id, org.name, '', '', '', ...CSV_COLUMNS.slice(6).map((c) => (org.total as Record<string, unknown>)[c])])
      // Group lines after the total: they overlap (GROUPS_NOTE), so a sum over 'user' lines stays the total.
      for (const g of org.groups) rows.push(['group', org.id, org.name, '', '', '', ...CSV_COLUMNS.slice(6).map((c) => (g as Record<string, unknown>)[c])])
    }
    return rows.map((r) => r.map(csvField).join(',') + '\r\n').join('')
  }
  const cell = (v: unknown): string => String(v ?? '').replace(/\|/g, '\\|').replace(/[\r\n]+/g, ' ')
  const parts: string[] = []
  s.organizations.forEach((org, n) => {
    const note = `exact-${n + 1}` // a label of its own per organization; an id may hold what a label cannot
    parts.push(`# Statement ${s.month}: ${cell(org.name)} (${org.id})`, '',
      `Period ${s.from} to ${s.to} (UTC, end exclusive). Markup ${org.markup_percent}%. Amounts in USD, exact.`, '',
      `| User | Email | Requests | Tokens | Cost | Markup ${org.markup_percent}% | Billed |`, '|---|---|--:|--:|--:|--:|--:|')
    for (const l of org.lines) {
      const who = l.user_id === null ? '(no user)' : l.user_name ? `${cell(l.user_name)} (${cell(l.user_id)})` : cell(l.user_id)
      parts.push(`| ${who} | ${cell(l.user_email)} | ${l.requests} | ${l.total_tokens} | ${l.cost_usd} | ${l.markup_usd} | ${l.billed_cost_usd} |`)
    }
    const t = org.total
    parts.push(`| **Total** | | **${t.requests}** | **${t.total_tokens}** | **${t.cost_usd}** | **${t.markup_usd}** | **${t.billed_cost_usd}** |`, '',
      `**Invoice total: ${invoiceUsd(roundDecimal(t.billed_cost_usd, 2))}**[^${note}]`, '',
      `[^${note}]: Exactly ${t.billed_cost_usd} USD, the billed total above, rounded half up to the cent once, on the total.`, '')
    if (org.groups.length > 0) {
      parts.push('## By group', '', `${GROUPS_NOTE}`, '',
        `| Group | Members | Requests | Tokens | Cost | Markup ${org.markup_percent}% | Billed |`, '|---|--:|--:|--:|--:|--:|--:|')
      for (const g of org.groups) {
        parts.push(`| ${cell(g.group_id)} | ${g.members} | ${g.requests} | ${g.total_tokens} | ${g.cost_usd} | ${g.markup_usd} | ${g.billed_cost_usd} |`)
      }
      parts.push('')
    }
  })
  return parts.join('\n')
}

/** Cents as a person reads them, thousands grouped: "1234.57" -> "$1,234.57". */
function invoiceUsd (cents: string): string {
  const neg = cents.startsWith('-')
  const [int, frac] = (neg ? cents.slice(1) : cents).split('.')
  return `${neg ? '-' : ''}$${int.replace(/\B(?=(\d{3})+(?!\d))/g, ',')}.${frac}`
}

/** The command: parse, open the database (DATABASE_URL, else the embedded one), print or write. */
export async function statement (args: string[], env: Record<string, string | undefined>, stdout: (s: string) => void = (s) => process.stdout.write(s)): Promise<void> {
  const o = parseArgs(args)
  const cfg = loadDatabaseConfig(env)
  if (!o.all && cfg.organizationId === undefined) throw new StatementError('OPENROUTER_EXTERNAL_USER is not set: name the organization, or pass --all-organizations')
  let embedded: EmbeddedDb | null = null
  let sql: Sql
  if (cfg.databaseUrl) sql = postgres(cfg.databaseUrl, poolOptions(1))
  else {
    // The embedded database is served by a running sidecar on its port; else open it here.
    sql = postgres(`postgres://postgres@127.0.0.1:${cfg.embeddedPort}/postgres`, { ...poolOptions(1), connect_timeout: 2 })
    try { await sql`select 1` } catch {
      await sql.end({ timeout: 0 })
      embedded = await startEmbedded(cfg.dataDir, 0, createLogger('silent'))
      sql = postgres(embedded.url, poolOptions(1))
    }
  }
  try {
    const text = render(await buildStatement(sql, o.all ? undefined : cfg.organizationId, o.month), o.format)
    if (o.out) writeFileSync(o.out, text)
    else stdout(text)
  } finally {
    await sql.end({ timeout: 1 })
    await embedded?.stop()
  }
}
