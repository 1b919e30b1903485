import type { Config } from '../config/config.js'
import { envFileNames } from '../config/env-file.js'
import { unknownVariables } from '../config/unknown-variables.js'
import { describe, type Sql } from '../db/connect.js'
import { within } from '../lib/deadline.js'
import type { Logger } from '../lib/log.js'
import { USER_BUDGETS_SHOWN, bannerLines, type BannerBudget } from './banner.js'

// The start-up banner as the composition calls it once boot is done: reads what the banner needs
// from the budgets table (two small reads by primary key, within BUDGET_DB_TIMEOUT_MS) and logs
// the lines. Never throws: a banner that cannot be read in full is still printed, saying so.

export interface StartupBannerDeps {
  config: Config
  /** The environment the configuration was read from (the .env file's names are remembered with it). */
  env: Record<string, string | undefined>
  port: number
  sql: Sql
  /** The embedded database's directory, or null with DATABASE_URL. */
  embeddedDir: string | null
  log: Logger
}

export async function logStartupBanner (d: StartupBannerDeps): Promise<void> {
  try {
    const { budgets, userBudgets, error } = await readBudgets(d.sql, d.config.organization.id, d.config.limits.dbTimeoutMs)
    const lines = bannerLines({
      config: d.config, port: d.port, embeddedDir: d.embeddedDir, budgets, userBudgets, budgetsError: error,
      unknown: unknownVariables(d.env, envFileNames(d.env)),
    })
    for (const l of lines) d.log[l.level](l.fields, l.msg)
  } catch (err) {
    d.log.warn({ err: describe(err) }, 'start-up summary could not be printed')
  }
}

async function readBudgets (sql: Sql, org: string, ms: number): Promise<{ budgets: BannerBudget[], userBudgets: number, error: string | null }> {
  try {
    return await within(Promise.all([
      sql<BannerBudget[]>`
        select scope, user_id as "userId", limit_usd::text as "limitUsd", period, source
          from budgets where organization_id = ${org} and scope <> 'user'`,
      sql<Array<BannerBudget & { n: number }>>`
        select scope, user_id as "userId", limit_usd::text as "limitUsd", period, source, count(*) over ()::int as n
          from budgets where organization_id = ${org} and scope = 'user' and limit_usd is not null
         order by user_id limit ${USER_BUDGETS_SHOWN}`,
    ]).then(([shared, users]) => ({
      budgets: [...shared, ...users.map(({ n: _, ...b }) => b)],
      userBudgets: users[0]?.n ?? 0,
      error: null,
    })), ms, () => { throw new Error(`no answer within ${ms} ms`) })
  } catch (err) {
    return { budgets: [], userBudgets: 0, error: describe(err) }
  }
}
