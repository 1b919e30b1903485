// Breaks of the billing views and the indexes the documented queries need (sql/016): each must
// make the README billing test fail, by its numbers, its trimmed amounts or its plans.
const README = ['test/readme-billing.test.ts']
const VIEWS = 'sql/015_billing_views_ranges.sql'
export const BREAKS = [
  {
    name: 'queries: the cancelled answers lose their index',
    file: VIEWS,
    search: "CREATE INDEX usage_events_client_aborted ON usage_events (created_at) WHERE outcome = 'client_aborted';",
    replace: '',
    tests: README,
  },
  {
    name: 'queries: the monthly rollups lose their month index',
    file: VIEWS,
    search: 'CREATE INDEX usage_monthly_rollups_month ON usage_monthly_rollups (month);',
    replace: '',
    tests: README,
  },
  {
    name: 'queries: spend_per_user_month computes its month from the daily rollups again',
    file: VIEWS,
    search: `FROM (SELECT organization_id, month, external_user_id, kind, user_id, requests, prompt_tokens, completion_tokens, cost_usd, billed_cost_usd
      FROM usage_monthly_rollups`,
    replace: `FROM (SELECT organization_id, date_trunc('month', day::timestamp)::date AS month, external_user_id, kind, user_id, requests, prompt_tokens, completion_tokens, cost_usd, billed_cost_usd
      FROM usage_daily_rollups`,
    tests: README,
  },
  {
    name: 'queries: spend_per_model_month leaves out the deltas not folded yet',
    file: VIEWS,
    search: '      FROM usage_rollup_deltas) r\nGROUP BY organization_id, month, nullif(model',
    replace: '      FROM usage_rollup_deltas WHERE false) r\nGROUP BY organization_id, month, nullif(model',
    tests: README,
  },
  {
    name: 'queries: spend_per_day leaves out the deltas not folded yet',
    file: VIEWS,
    search: '      FROM usage_rollup_deltas) r\nGROUP BY organization_id, day, kind',
    replace: '      FROM usage_rollup_deltas WHERE false) r\nGROUP BY organization_id, day, kind',
    tests: README,
  },
  {
    name: 'queries: spend_per_user_month shows its billed amounts untrimmed',
    file: VIEWS,
    search: 'trim_scale(coalesce(sum(r.billed_cost_usd), 0)) AS billed_cost_usd',
    replace: 'coalesce(sum(r.billed_cost_usd), 0) AS billed_cost_usd',
    tests: README,
  },
  {
    name: 'queries: spend_per_day shows its costs untrimmed',
    file: VIEWS,
    search: `       trim_scale(coalesce(sum(cost_usd), 0))        AS cost_usd,
       trim_scale(coalesce(sum(billed_cost_usd), 0)) AS billed_cost_usd
FROM (SELECT organization_id, day, kind`,
    replace: `       coalesce(sum(cost_usd), 0)        AS cost_usd,
       trim_scale(coalesce(sum(billed_cost_usd), 0)) AS billed_cost_usd
FROM (SELECT organization_id, day, kind`,
    tests: README,
  },
  {
    name: 'queries: the invoice reads a month of raw rows again',
    file: 'README.md',
    search: `from spend_per_model_month s join organizations o on o.id = s.organization_id
where s.month = (date_trunc('month', now() at time zone 'UTC') - interval '1 month')::date`,
    replace: `from usage_events s join organizations o on o.id = s.organization_id
where s.created_at >= (date_trunc('month', now() at time zone 'UTC') - interval '1 month') at time zone 'UTC'
  and s.created_at <  date_trunc('month', now() at time zone 'UTC') at time zone 'UTC'`,
    tests: README,
  },
]
