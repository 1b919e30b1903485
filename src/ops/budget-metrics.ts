import { Counter, Gauge, type Registry } from 'prom-client'
import type { Readings } from './db-readings.js'
import type { FailOpenStats } from '../budgets/fail-open.js'

// usage_proxy_budget_utilization_ratio{scope="organization"|"default"} and
// usage_proxy_budget_overrun_usd_total{scope}: Postgres's shared truth, so every replica reports
// the same, as read in the background (src/db-readings.ts): a scrape never waits on the database,
// and the request path does nothing. The overrun counts up within a budget period and starts
// again at 0 with the next one (a counter reset, as rate() expects).
// usage_proxy_budget_fail_open_total: requests this process served without a spend check, read
// from memory, so it is there exactly when Postgres is not.

export type Utilization = NonNullable<Readings['utilization']>

export function registerBudgetMetrics (registry: Registry, latest: () => Pick<Readings, 'utilization' | 'overruns'> | null, failOpen: () => FailOpenStats | null = () => null): void {
  new Gauge({
    name: 'usage_proxy_budget_utilization_ratio',
    help: 'Billed spend of the current period divided by the budget limit (default: its most spent user), as of the last background read',
    labelNames: ['scope'],
    registers: [registry],
    collect () {
      this.reset()
      // Unknown (Postgres away, or not read yet): no sample rather than a stale or false one.
      for (const u of latest()?.utilization ?? []) this.set({ scope: u.scope }, u.ratio)
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
    help: 'Billed USD by which real costs exceeded their reservations in the current budget period (default: all its users), as of the last background read',
    labelNames: ['scope'],
    registers: [registry],
    collect () {
      this.reset()
      for (const o of latest()?.overruns ?? []) this.inc({ scope: o.scope }, Number(o.usd))
    },
  })
}
