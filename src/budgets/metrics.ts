import { Gauge, type Registry } from 'prom-client'
import type { Sql } from '../db/connect.js'
import { utilization } from './store.js'

// usage_proxy_budget_utilization_ratio{scope="organization"|"default"}: read from Postgres when
// Prometheus scrapes, so every replica reports the shared truth and the request path does nothing.

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
}
