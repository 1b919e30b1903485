import type { Sql } from '../../db/connect.js'
import { requestsSince, sumsSource, usageByGroup } from './usage-report.js'
import { totalsOf } from './totals.js'
import type { BudgetFor } from '../../budgets/status-for.js'
import { formatUsd } from '../../lib/decimal.js'

// "My usage": what a user sees when they pick the virtual model in the chat. A short Markdown
// summary of their own usage, read from the ledger; it costs nothing and calls no one.

export interface MyUsageInput {
  organizationId: string
  userId: string | null
  externalUserId: string
  budgetFor: BudgetFor
  now?: Date
}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December']

export async function myUsageSummary (sql: Sql, i: MyUsageInput): Promise<string> {
  if (i.userId === null) {
    return 'I cannot tell who you are: usage-proxy received no user identity with this request, so there is no personal usage to show. ' +
      'Ask your administrator to turn on `ENABLE_FORWARD_USER_INFO_HEADERS` in Open WebUI.'
  }
  const now = i.now ?? new Date()
  const monthStart = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1))
  const nextMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1))
  const today = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()))
  const period = { organizationId: i.organizationId, from: monthStart.toISOString(), to: nextMonth.toISOString(), externalUserId: i.externalUserId }
  const source = await sumsSource(sql, period)
  const [models, todayCount, budget] = await Promise.all([
    usageByGroup(sql, period, 'model', source),
    requestsSince(sql, i.organizationId, i.externalUserId, today.toISOString()),
    i.budgetFor(i.userId),
  ])
  const totals = totalsOf(models)
  const lines = [
    `**Your usage in ${MONTHS[now.getUTCMonth()]} ${now.getUTCFullYear()}** (UTC)`,
    '',
    `- Spent this month: **${formatUsd(totals.billed_cost_usd)}** over ${totals.requests} ${totals.requests === 1 ? 'request' : 'requests'} (${Number(totals.total_tokens).toLocaleString('en-US')} tokens)`,
  ]
  if (budget) {
    lines.push(`- Budget: ${formatUsd(budget.limit_usd)} per ${budget.period}, ${formatUsd(budget.used_usd)} used, **${formatUsd(budget.remaining_usd)} left**` +
      (budget.resets_at ? `; resets ${budget.resets_at.slice(0, 16).replace('T', ' ')} UTC` : ''))
  } else {
    lines.push('- Budget: none set for you')
  }
  lines.push(`- Requests today: ${todayCount}`)
  const top = models.slice(0, 3)
  if (top.length > 0) {
    lines.push('', 'Top models this month:')
    top.forEach((m, n) => lines.push(`${n + 1}. ${m.key ?? '(unknown)'}: ${formatUsd(m.billed_cost_usd)} (${m.requests} ${m.requests === 1 ? 'request' : 'requests'})`))
  }
  lines.push('', '_Answered by usage-proxy from its ledger; this answer is free._')
  return lines.join('\n')
}
