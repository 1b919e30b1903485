import { Counter, Gauge, type Registry } from 'prom-client'
import type { Sql } from '../db/connect.js'
import { within } from '../deadline.js'
import type { FailOpenStats } from './fail-open.js'
import { overruns, utilization } from './store.js'

// usage_proxy_budget_utilization_ratio{scope="organization"|"default"} and
// usage_proxy_budget_overrun_usd_total{scope}: read from Postgres when Prometheus scrapes, so every
// replica reports the shared truth and the request path does nothing. The overrun counts up within
// a budget period and starts again at 0 with the next one (a counter reset, as rate() expects).
// usage_proxy_budget_fail_open_total: requests this process served without a spend check, read
// from memory, so it is there exactly when Postgres is not.

/** A scrape waits this long for the utilization read, then goes without it. */
const UTILIZATION_DEADLINE_MS = 1000

export function registerBudgetMetrics (registry: Registry, source: () => { sql: Sql, org: string } | null, failOpen: () => FailOpenStats | null = () => null): void {
  new Gauge({
    name: 'usage_proxy_budget_utilization_ratio',
    help: 'Billed spend of the current period divided by the budget limit (default: its most spent user)',
    labelNames: ['scope'],
    registers: [registry],
    async collect () {
      this.reset()
      const s = source()
      if (!s) return
      try {
        const rows = await within(utilization(s.sql, s.org), UTILIZATION_DEADLINE_MS, () => [])
        for (const u of rows) this.set({ scope: u.scope }, u.ratio)
      } catch { /* Postgres away: no sample rather than a failed scrape */ }
    },
  })
  new Counter({
    name: 'usage_proxy_budget_fail_open_total',
    help: 'Requests served without a spend check (BUDGET_FAIL_MODE=open, Postgres did not answer within BUDGET_DB_TIMEOUT_MS); their spend counts when their records land',
    registers: [registry],
    collect () {
      this.reset()
      this.inc(failOpen()?.total ?? 0)
    },
  })
  new Gauge({
    name: 'usage_proxy_budget_fail_open_last_timestamp_seconds',
    help: 'When the last request was served without a spend check (0: never since start)',
    registers: [registry],
    collect () {
      const at = failOpen()?.lastAt
      this.set(at ? at.getTime() / 1000 : 0)
    },
  })
  new Counter({
    name: 'usage_proxy_budget_overrun_usd_total',
    help: 'Billed USD by which real costs exceeded their reservations in the current budget period (default: all its users)',
    labelNames: ['scope'],
    registers: [registry],
    async collect () {
      this.reset()
      const s = source()
      if (!s) return
      try {
        for (const o of await within(overruns(s.sql, s.org), UTILIZATION_DEADLINE_MS, () => [])) this.inc({ scope: o.scope }, Number(o.usd))
      } catch { /* Postgres away: no sample rather than a failed scrape */ }
    },
  })
}
