import { Counter, Gauge, type Registry } from 'prom-client'
import type { Sql } from '../db/connect.js'
import { overruns, utilization } from './store.js'

// usage_proxy_budget_utilization_ratio{scope="organization"|"default"} and
// usage_proxy_budget_overrun_usd_total{scope}: read from Postgres when Prometheus scrapes, so every
// replica reports the shared truth and the request path does nothing. The overrun counts up within
// a budget period and starts again at 0 with the next one (a counter reset, as rate() expects).

export function registerBudgetMetrics (registry: Registry, source: () => { sql: Sql, org: string } | null): void {
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
        for (const u of await utilization(s.sql, s.org)) this.set({ scope: u.scope }, u.ratio)
      } catch { /* Postgres away: no sample rather than a failed scrape */ }
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
        for (const o of await overruns(s.sql, s.org)) this.inc({ scope: o.scope }, Number(o.usd))
      } catch { /* Postgres away: no sample rather than a failed scrape */ }
    },
  })
}
