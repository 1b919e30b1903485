-- The billing views, as people read them in psql, fast at any size and without trailing zeros.
--
-- * Each view reads the coarsest rollup that holds its grouping, and its date column is a plain
--   column of that rollup, never computed from a finer one: `month = …`, `day >= …` and any range
--   on them reach the rollup's index as they are written. spend_per_user_month and
--   spend_per_model_month computed `month` from the daily rollups' `day`, so a month filter
--   without an organization read every daily rollup row (0.9-2.2 s at 10 million rows, BENCHMARKS.md
--   "The documented queries at size"); they read usage_monthly_rollups now, and spend_per_day
--   reads usage_org_daily_rollups, which is grouped exactly as that view is.
-- * Like usage_monthly_totals and usage_org_daily_totals, each adds the deltas not folded yet, so
--   the views stay exact at every moment. The deltas are few (the compaction folds them every few
--   seconds) and unindexed, so computing their month there costs nothing.
-- * Amounts are trim_scale()d: a sum of billed costs carries the scale of the markup product
--   (0.0143275740000000000000000000); the view shows 0.014327574, the same number. Totals summed
--   over the views stay exact; only the display loses the zeros.
--
-- Same column names and types as before (numeric stays numeric), so views built on these ones
-- keep working.

CREATE OR REPLACE VIEW spend_per_user_month AS
SELECT r.organization_id,
       r.month,
       r.external_user_id,
       coalesce(max(r.user_id), max(m.user_id))  AS user_id,
       max(m.user_name)                          AS user_name,
       max(m.user_email)                         AS user_email,
       r.kind,
       sum(r.requests)::bigint                   AS requests,
       sum(r.prompt_tokens)::bigint              AS prompt_tokens,
       sum(r.completion_tokens)::bigint          AS completion_tokens,
       trim_scale(coalesce(sum(r.cost_usd), 0))        AS cost_usd,
       trim_scale(coalesce(sum(r.billed_cost_usd), 0)) AS billed_cost_usd
FROM (SELECT organization_id, month, external_user_id, kind, user_id, requests, prompt_tokens, completion_tokens, cost_usd, billed_cost_usd
      FROM usage_monthly_rollups
      UNION ALL
      SELECT organization_id, date_trunc('month', day::timestamp)::date, external_user_id, kind, user_id, requests, prompt_tokens,
             completion_tokens, cost_usd, billed_cost_usd
      FROM usage_rollup_deltas) r
LEFT JOIN user_mappings m
  ON m.organization_id = r.organization_id AND m.external_user_id = r.external_user_id
GROUP BY r.organization_id, r.month, r.external_user_id, r.kind;

CREATE OR REPLACE VIEW spend_per_model_month AS
SELECT organization_id,
       month,
       nullif(model, '')                         AS model,
       kind,
       sum(requests)::bigint                     AS requests,
       sum(prompt_tokens)::bigint                AS prompt_tokens,
       sum(completion_tokens)::bigint            AS completion_tokens,
       trim_scale(coalesce(sum(cost_usd), 0))        AS cost_usd,
       trim_scale(coalesce(sum(billed_cost_usd), 0)) AS billed_cost_usd
FROM (SELECT organization_id, month, model, kind, requests, prompt_tokens, completion_tokens, cost_usd, billed_cost_usd
      FROM usage_monthly_rollups
      UNION ALL
      SELECT organization_id, date_trunc('month', day::timestamp)::date, model, kind, requests, prompt_tokens, completion_tokens,
             cost_usd, billed_cost_usd
      FROM usage_rollup_deltas) r
GROUP BY organization_id, month, nullif(model, ''), kind;

CREATE OR REPLACE VIEW spend_per_day AS
SELECT organization_id,
       day,
       kind,
       sum(requests)::bigint                     AS requests,
       sum(failed_or_aborted)::bigint            AS failed_or_aborted,
       sum(total_tokens)::bigint                 AS total_tokens,
       trim_scale(coalesce(sum(cost_usd), 0))        AS cost_usd,
       trim_scale(coalesce(sum(billed_cost_usd), 0)) AS billed_cost_usd
FROM (SELECT organization_id, day, kind, requests, failed_or_aborted, total_tokens, cost_usd, billed_cost_usd
      FROM usage_org_daily_rollups
      UNION ALL
      SELECT organization_id, day, kind, requests, failed_or_aborted, total_tokens, cost_usd, billed_cost_usd
      FROM usage_rollup_deltas) r
GROUP BY organization_id, day, kind;

-- "This month" and "last month" across every organization (the psql totals, the invoice) filter
-- on the month alone; the primary key leads with the organization. Sums are not INCLUDEd: the
-- compaction updates them in place, and an index on columns it never changes keeps those
-- updates HOT.
CREATE INDEX usage_monthly_rollups_month ON usage_monthly_rollups (month);

-- The latest answers the client hung up on (README "Cancelled answers"): a few percent of the
-- rows, newest first. Partial, so the rows that end otherwise, nearly every insert, never touch it.
CREATE INDEX usage_events_client_aborted ON usage_events (created_at) WHERE outcome = 'client_aborted';
