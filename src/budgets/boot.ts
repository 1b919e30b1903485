import type { Config } from '../config/config.js'
import type { Sql } from '../db/connect.js'
import type { Logger } from '../lib/log.js'
import type { UsageRecord } from '../usage/ledger/record.js'
import { Alerts } from './alerts.js'
import { Allowlists } from './allowlists.js'
import { Limits } from './limits.js'
import { PriceList } from './prices.js'
import { seedFromEnv } from './store.js'

// Spend controls as main wires them: budgets from the environment written (unless the admin API
// owns them), OpenRouter's prices loaded in the background, the admission ready.

/** What main needs of the upstream pool: a GET on OpenRouter with the organization's key. */
export interface PriceSource { pool: { request: (o: { method: 'GET', path: string, headers: Record<string, string>, headersTimeout: number, bodyTimeout: number }) => Promise<{ statusCode: number, body: { text: () => Promise<string> } }> }, basePath: string }

export interface SpendControls { limits: Limits, allowlists: Allowlists, prices: PriceList, alerts: Alerts, close: () => void }

/** admissionSql: the admissions' own pool (src/boot.ts); everything else here uses sql. */
export async function startLimits (o: { sql: Sql, admissionSql?: Sql, config: Config, upstream: PriceSource, log: Logger, record: (r: UsageRecord) => void }): Promise<SpendControls> {
  const { config, sql, log } = o
  await seedFromEnv(sql, config.organization.id, config.limits)
  const prices = new PriceList(async () => {
    const res = await o.upstream.pool.request({
      method: 'GET', path: `${o.upstream.basePath}/models`, headers: { authorization: `Bearer ${config.openrouter.apiKey}`, accept: 'application/json' },
      headersTimeout: 15_000, bodyTimeout: 15_000,
    })
    return { status: res.statusCode, body: await res.body.text() }
  }, config.limits.unknownModelUsdPerMtok, log)
  const alerts = new Alerts(sql, config.organization.id, config.limits.warnPercent, config.limits.alertWebhookUrl, log)
  const limits = new Limits({
    sql, admissionSql: o.admissionSql, record: o.record, log, config: config.limits, organizationId: config.organization.id,
    markupPercent: config.organization.markupPercent, prices, alerts,
  })
  await limits.refresh()
  const allowlists = new Allowlists(sql, config.organization.id, config.limits.refreshMs, log)
  await allowlists.refresh()
  return { limits, allowlists, prices, alerts, close () { limits.close(); allowlists.close(); prices.stop() } }
}
