-- OpenRouter's full usage and `kind` in the billing views.
--   cache_write_tokens  prompt_tokens_details.cache_write_tokens (Anthropic: cache_creation_input_tokens):
--                       tokens written to the provider's prompt cache, priced above plain input
--   audio_tokens        prompt_tokens_details.audio_tokens
--   cancelled           from GET /generation: OpenRouter stopped the generation (the client left);
--                       NULL when the generation was not looked up
ALTER TABLE usage_events
  ADD COLUMN cache_write_tokens integer,
  ADD COLUMN audio_tokens       integer,
  ADD COLUMN cancelled          boolean;

-- The views gain `kind` (chat, an Open WebUI task such as title_generation, or api) as a
-- grouping column, so background tasks are billed apart from chats; the per-user view takes the
-- app's user id from the rows themselves, so body-`user` rows are told apart from the
-- organization's own (user_id NULL). Totals stay sums of numeric: exact to the last digit.
DROP VIEW IF EXISTS spend_per_user_month;
DROP VIEW IF EXISTS spend_per_model_month;
DROP VIEW IF EXISTS spend_per_day;

CREATE VIEW spend_per_user_month AS
SELECT e.organization_id,
       date_trunc('month', e.created_at AT TIME ZONE 'UTC')::date  AS month,
       e.external_user_id,
       coalesce(max(e.user_id), max(m.user_id)) AS user_id,
       max(m.user_name)                         AS user_name,
       max(m.user_email)                        AS user_email,
       e.kind,
       count(*)                                 AS requests,
       coalesce(sum(e.prompt_tokens), 0)        AS prompt_tokens,
       coalesce(sum(e.completion_tokens), 0)    AS completion_tokens,
       coalesce(sum(e.cost_usd), 0)             AS cost_usd,
       coalesce(sum(e.billed_cost_usd), 0)      AS billed_cost_usd
FROM usage_events e
LEFT JOIN user_mappings m
  ON m.organization_id = e.organization_id AND m.external_user_id = e.external_user_id
GROUP BY e.organization_id, 2, e.external_user_id, e.kind;

CREATE VIEW spend_per_model_month AS
SELECT organization_id,
       date_trunc('month', created_at AT TIME ZONE 'UTC')::date    AS month,
       coalesce(served_model, model)            AS model,
       kind,
       count(*)                                 AS requests,
       coalesce(sum(prompt_tokens), 0)          AS prompt_tokens,
       coalesce(sum(completion_tokens), 0)      AS completion_tokens,
       coalesce(sum(cost_usd), 0)               AS cost_usd,
       coalesce(sum(billed_cost_usd), 0)        AS billed_cost_usd
FROM usage_events
GROUP BY 1, 2, 3, 4;

CREATE VIEW spend_per_day AS
SELECT organization_id,
       (created_at AT TIME ZONE 'UTC')::date    AS day,
       kind,
       count(*)                                 AS requests,
       count(*) FILTER (WHERE outcome <> 'ok')  AS failed_or_aborted,
       coalesce(sum(total_tokens), 0)           AS total_tokens,
       coalesce(sum(cost_usd), 0)               AS cost_usd,
       coalesce(sum(billed_cost_usd), 0)        AS billed_cost_usd
FROM usage_events
GROUP BY 1, 2, 3;
