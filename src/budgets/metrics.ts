import { Gauge, type Registry } from 'prom-client'

// usage_proxy_budget_utilization_ratio{scope="organization"|"default"}: Postgres's shared truth,
// so every replica reports the same, as read in the background (src/db-readings.ts): a scrape
// never waits on the database, and the request path does nothing.

export type Utilization = Array<{ scope: 'organization' | 'default', ratio: number }>

export function registerBudgetMetrics (registry: Registry, latest: () => Utilization | null): void {
  new Gauge({
    name: 'usage_proxy_budget_utilization_ratio',
    help: 'Billed spend of the current period divided by the budget limit (default: its most spent user), as of the last background read',
    labelNames: ['scope'],
    registers: [registry],
    collect () {
      this.reset()
      // Unknown (Postgres away, or not read yet): no sample rather than a stale or false one.
      for (const u of latest() ?? []) this.set({ scope: u.scope }, u.ratio)
    },
  })
}
