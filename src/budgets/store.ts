import type { BudgetPeriod, LimitsConfig } from '../config/config.js'
import type { Querier, Sql } from '../db/connect.js'
import { trimDecimal } from '../lib/decimal.js'
import { resetsAt } from './periods.js'
import { appendAudit } from '../audit/audit.js'

// Budgets as rows: what the admin API and the boot-time seeding read and write. Writing a row
// (here or with psql) fires budget_recount(), so a budget set mid-period starts from the spend
// already recorded in that period.

/**
 * 'group' and 'key' budgets name their subject (a group id, an API key id) where a user budget
 * names its user: the same `userId` argument, the same user_id column.
 */
export type BudgetScope = 'organization' | 'default-user' | 'user' | 'group' | 'key'

export interface BudgetStatus {
  scope: BudgetScope
  user_id: string | null
  /** Scope 'group' only: the group it caps. */
  group_id?: string
  /** Scope 'key' only: the API key it caps. */
  key_id?: string
  limit_usd: string
  period: BudgetPeriod
  source: 'env' | 'api'
  spent_usd: string
  reserved_usd: string
  /** What real costs exceeded their reservations by this period (estimates going wrong). */
  overrun_usd: string
  remaining_usd: string
  period_start: string
  resets_at: string | null
  updated_at: string
}

interface BudgetRow { scope: BudgetScope, user_id: string, limit_usd: string | null, period: BudgetPeriod, source: 'env' | 'api', updated_at: Date }

export async function setBudget (sql: Querier, org: string, scope: BudgetScope, userId: string, limitUsd: string, period: BudgetPeriod): Promise<void> {
  await sql`
    insert into budgets (organization_id, scope, user_id, limit_usd, period, source, updated_at)
    values (${org}, ${scope}, ${userId}, ${limitUsd}::numeric, ${period}, 'api', now())
    on conflict (organization_id, scope, user_id) do update
      set limit_usd = excluded.limit_usd, period = excluded.period, source = 'api', updated_at = now()`
}

/** Removes a budget; the row stays as a tombstone so the environment does not bring it back. */
export async function deleteBudget (sql: Sql, org: string, scope: BudgetScope, userId: string): Promise<boolean> {
  const rows = await sql`
    update budgets set limit_usd = null, source = 'api', updated_at = now()
     where organization_id = ${org} and scope = ${scope} and user_id = ${userId} and limit_usd is not null
    returning 1`
  return rows.length > 0
}

/**
 * ORG_BUDGET_USD / USER_BUDGET_USD: written unless the admin API (source 'api') set that budget.
 * A boot that changes a budget appends an audit line (actor `env`) in the same transaction; a boot
 * that finds the budget as the environment says appends nothing.
 */
export async function seedFromEnv (sql: Sql, org: string, cfg: LimitsConfig): Promise<void> {
  const wanted: Array<[BudgetScope, LimitsConfig['orgBudget']]> = [['organization', cfg.orgBudget], ['default-user', cfg.userBudget]]
  for (const [scope, b] of wanted) {
    await sql.begin(async (t) => {
      const tx = t as unknown as Sql
      const [before] = await tx<Array<{ limit_usd: string | null, period: BudgetPeriod }>>`
        select limit_usd::text, period from budgets where organization_id = ${org} and scope = ${scope} and user_id = '' for update`
      const was = before?.limit_usd == null ? null : { limit_usd: trimDecimal(before.limit_usd), period: before.period }
      if (b) {
        const written = await tx<Array<{ limit_usd: string, period: BudgetPeriod }>>`
          insert into budgets (organization_id, scope, user_id, limit_usd, period, source)
          values (${org}, ${scope}, '', ${b.limitUsd}::numeric, ${b.period}, 'env')
          on conflict (organization_id, scope, user_id) do update
            set limit_usd = excluded.limit_usd, period = excluded.period, updated_at = now()
            where budgets.source = 'env' and (budgets.limit_usd is distinct from excluded.limit_usd or budgets.period <> excluded.period)
          returning limit_usd::text, period`
        if (written.length > 0) {
          await appendAudit(tx, org, { actor: 'env', action: 'budget.set', target: `budgets/${scope}`, before: was, after: { limit_usd: trimDecimal(written[0].limit_usd), period: written[0].period } })
        }
      } else {
        // The variable was removed: so is the budget it created (one set through the API stays).
        const gone = await tx`delete from budgets where organization_id = ${org} and scope = ${scope} and source = 'env' returning 1`
        if (gone.length > 0 && was !== null) await appendAudit(tx, org, { actor: 'env', action: 'budget.deleted', target: `budgets/${scope}`, before: was, after: null })
      }
    })
  }
}

/**
 * Every budget with its current period's spend (sums in SQL: exact); userId narrows to what applies
 * to one user. The default budget's spend is that of every user it governs, and its remaining_usd
 * what its most spent user has left.
 */
export async function budgetStatus (sql: Sql, org: string, now: Date, userId?: string): Promise<Array<BudgetStatus & { applies?: boolean }>> {
  const one = userId !== undefined
  const rows = await sql<Array<BudgetRow & { period_start: Date, spent: string, reserved: string, overrun: string, remaining: string }>>`
    select b.scope, b.user_id, b.limit_usd::text, b.period, b.source, b.updated_at,
           budget_period_start(b.period, ${now}) as period_start,
           coalesce(sum(c.spent_usd), 0)::text as spent,
           coalesce(sum(c.reserved_usd), 0)::text as reserved,
           coalesce(sum(c.overrun_usd), 0)::text as overrun,
           greatest(b.limit_usd - case when b.scope = 'default-user' then coalesce(max(c.spent_usd + c.reserved_usd), 0)
                                       else coalesce(sum(c.spent_usd + c.reserved_usd), 0) end, 0)::text as remaining
      from budgets b
      left join budget_counters c
        on c.organization_id = b.organization_id and c.period = b.period and c.period_start = budget_period_start(b.period, ${now})
       and ((b.scope = 'organization' and c.scope = 'organization')
         or (b.scope = 'user' and c.scope = 'user' and c.user_id = b.user_id)
         or (b.scope in ('group', 'key') and c.scope = b.scope and c.user_id = b.user_id)
         or (b.scope = 'default-user' and c.scope = 'user' ${one ? sql`and c.user_id = ${userId}` : sql``}
             and not exists (select 1 from budgets o where o.organization_id = b.organization_id and o.scope = 'user'
                                                       and o.user_id = c.user_id and o.limit_usd is not null)))
     where b.organization_id = ${org} and b.limit_usd is not null
       ${one ? sql`and (b.scope <> 'user' or b.user_id = ${userId})
               and (b.scope <> 'group' or b.user_id = any(coalesce((select m.groups from user_mappings m where m.organization_id = ${org}
                                                                      and m.user_id = ${userId}), '{}')))
               and b.scope <> 'key'` : sql``}
     group by b.organization_id, b.scope, b.user_id
     order by b.scope = 'user', b.scope, b.user_id`
  const own = rows.some((b) => b.scope === 'user')
  return rows.map((b) => {
    const resets = resetsAt(b.period, now)
    const status: BudgetStatus & { applies?: boolean } = {
      scope: b.scope,
      user_id: b.scope === 'user' ? b.user_id : null,
      ...(b.scope === 'group' ? { group_id: b.user_id } : b.scope === 'key' ? { key_id: b.user_id } : {}),
      limit_usd: trimDecimal(b.limit_usd!),
      period: b.period,
      source: b.source,
      spent_usd: trimDecimal(b.spent),
      reserved_usd: trimDecimal(b.reserved),
      overrun_usd: trimDecimal(b.overrun),
      remaining_usd: trimDecimal(b.remaining),
      period_start: b.period_start.toISOString(),
      resets_at: resets ? resets.toISOString() : null,
      updated_at: b.updated_at.toISOString(),
    }
    if (one) status.applies = b.scope !== 'default-user' || !own
    return status
  })
}

/**
 * What real costs exceeded their reservations by in the current period of the organization's
 * budget and of the default one (all the users it governs), in USD: exact text.
 */
export async function overruns (sql: Sql, org: string): Promise<Array<{ scope: 'organization' | 'default', usd: string }>> {
  return sql<Array<{ scope: 'organization' | 'default', usd: string }>>`
    select case b.scope when 'organization' then 'organization' else 'default' end as scope,
           coalesce(sum(c.overrun_usd), 0)::text as usd
      from budgets b
      left join budget_counters c
        on c.organization_id = b.organization_id and c.period = b.period and c.period_start = budget_period_start(b.period, now())
       and c.scope = case b.scope when 'organization' then 'organization' else 'user' end
       and (b.scope = 'organization' or not exists (select 1 from budgets o where o.organization_id = b.organization_id
                                                      and o.scope = 'user' and o.user_id = c.user_id and o.limit_usd is not null))
     where b.organization_id = ${org} and b.scope in ('organization', 'default-user') and b.limit_usd is not null
     group by b.scope`
}

/**
 * Spent ÷ limit of the current period for the organization's budget and the default one (its
 * most spent user): a gauge per scope, never a series per user. Floats: for dashboards only.
 */
export async function utilization (sql: Sql, org: string): Promise<Array<{ scope: 'organization' | 'default', ratio: number }>> {
  const rows = await sql<Array<{ scope: 'organization' | 'default', ratio: string }>>`
    select case b.scope when 'organization' then 'organization' else 'default' end as scope,
           coalesce(coalesce(max(c.spent_usd), 0) / nullif(b.limit_usd, 0), 1)::text as ratio
      from budgets b
      left join budget_counters c
        on c.organization_id = b.organization_id and c.period = b.period and c.period_start = budget_period_start(b.period, now())
       and c.scope = case b.scope when 'organization' then 'organization' else 'user' end
       and (b.scope = 'organization' or not exists (select 1 from budgets o where o.organization_id = b.organization_id
                                                      and o.scope = 'user' and o.user_id = c.user_id and o.limit_usd is not null))
     where b.organization_id = ${org} and b.scope in ('organization', 'default-user') and b.limit_usd is not null
     group by b.scope, b.limit_usd`
  return rows.map((r) => ({ scope: r.scope, ratio: Number(r.ratio) }))
}
