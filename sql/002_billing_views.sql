-- Answers to the questions billing asks most. Totals are sums of numeric: exact to the last digit.

CREATE VIEW spend_per_user_month AS
SELECT e.organization_id,
       date_trunc('month', e.created_at AT TIME ZONE 'UTC')::date  AS month,
       e.external_user_id,
       max(m.user_id)                           AS user_id,
       max(m.user_name)                         AS user_name,
       max(m.user_email)                        AS user_email,
       count(*)                                 AS requests,
       coalesce(sum(e.prompt_tokens), 0)        AS prompt_tokens,
       coalesce(sum(e.completion_tokens), 0)    AS completion_tokens,
       coalesce(sum(e.cost_usd), 0)             AS cost_usd,
       coalesce(sum(e.billed_cost_usd), 0)      AS billed_cost_usd
FROM usage_events e
LEFT JOIN user_mappings m
  ON m.organization_id = e.organization_id AND m.external_user_id = e.external_user_id
GROUP BY 1, 2, 3;

CREATE VIEW spend_per_model_month AS
SELECT organization_id,
       date_trunc('month', created_at AT TIME ZONE 'UTC')::date    AS month,
       coalesce(served_model, model)            AS model,
       count(*)                                 AS requests,
       coalesce(sum(prompt_tokens), 0)          AS prompt_tokens,
       coalesce(sum(completion_tokens), 0)      AS completion_tokens,
       coalesce(sum(cost_usd), 0)               AS cost_usd,
       coalesce(sum(billed_cost_usd), 0)        AS billed_cost_usd
FROM usage_events
GROUP BY 1, 2, 3;

CREATE VIEW spend_per_day AS
SELECT organization_id,
       (created_at AT TIME ZONE 'UTC')::date    AS day,
       count(*)                                 AS requests,
       count(*) FILTER (WHERE outcome <> 'ok')  AS failed_or_aborted,
       coalesce(sum(total_tokens), 0)           AS total_tokens,
       coalesce(sum(cost_usd), 0)               AS cost_usd,
       coalesce(sum(billed_cost_usd), 0)        AS billed_cost_usd
FROM usage_events
GROUP BY 1, 2;
