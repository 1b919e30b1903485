-- Two read paths of the usage page that were still over 500 ms at 10 million rows (BENCHMARKS.md
-- "Usage API"):
--
-- * A year of usage read from the daily rollups is every user's every model and kind of every day
--   (750,000 rows for one organization in the benchmark). usage_monthly_rollups holds the same sums
--   per calendar month. The same compaction that folds usage_rollup_deltas into the daily rollups
--   folds them into the monthly ones, in the same statement, so the inserts' trigger is unchanged
--   (no extra cost on the ledger's write path) and both tables always hold the same deltas. Readers
--   add the deltas not folded yet (usage_monthly_totals), as they do for the daily rollups.
-- * The page's chart and its tasks table over a year read the same 750,000 rows only to sum them
--   per day or per kind. usage_org_daily_rollups holds the sums per organization, day and kind
--   (365 days x a few kinds a year), folded by the same compaction.
-- * The outcomes table over a year read 40,000 rows that did not end 'ok' from 38,000 heap pages
--   (0.5 s). Migration 008's partial index on those rows now carries the columns that table sums
--   (INCLUDE), so it is read from the index alone; it still holds only the rows that did not end
--   'ok', so rows that end 'ok' never touch it. It replaces 008's index, same key, same rows.
-- * GET /admin/v1/events?model= walked a whole month newest first when the model was rare (or
--   absent): no index led with the model. The filter is "model = m or served_model = m"; an index
--   on (organization, model, created_at, event_id) answers the first arm in order, and a partial
--   index holding only the rows served by another model than the one asked for answers the second.
--   The query reads them as two ordered scans merged (src/db/usage-report.ts events()). Rows served
--   as asked, nearly all of them, never enter the partial index: one more index per insert, not two.

CREATE TABLE usage_monthly_rollups (
  organization_id   text NOT NULL,
  month             date NOT NULL,                 -- first day of the UTC month of created_at
  external_user_id  text NOT NULL,
  model             text NOT NULL,                 -- as in usage_daily_rollups: coalesce(served_model, model, '')
  kind              text NOT NULL,
  requests          bigint NOT NULL,
  failed_or_aborted bigint NOT NULL,
  prompt_tokens     bigint NOT NULL,
  completion_tokens bigint NOT NULL,
  total_tokens      bigint NOT NULL,
  cached_tokens     bigint NOT NULL,
  reasoning_tokens  bigint NOT NULL,
  cost_usd          numeric NOT NULL,
  upstream_cost_usd numeric NOT NULL,
  billed_cost_usd   numeric NOT NULL,
  user_id           text,
  PRIMARY KEY (organization_id, month, external_user_id, model, kind)
);

CREATE TABLE usage_org_daily_rollups (
  organization_id   text NOT NULL,
  day               date NOT NULL,
  kind              text NOT NULL,
  requests          bigint NOT NULL,
  failed_or_aborted bigint NOT NULL,
  prompt_tokens     bigint NOT NULL,
  completion_tokens bigint NOT NULL,
  total_tokens      bigint NOT NULL,
  cached_tokens     bigint NOT NULL,
  reasoning_tokens  bigint NOT NULL,
  cost_usd          numeric NOT NULL,
  upstream_cost_usd numeric NOT NULL,
  billed_cost_usd   numeric NOT NULL,
  PRIMARY KEY (organization_id, day, kind)
);

-- The monthly rollups as of now: folded rows plus the deltas not folded yet. Read this, not the table.
CREATE VIEW usage_monthly_totals AS
SELECT organization_id, month, external_user_id, model, kind,
       sum(requests)::bigint AS requests, sum(failed_or_aborted)::bigint AS failed_or_aborted,
       sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
       sum(total_tokens)::bigint AS total_tokens, sum(cached_tokens)::bigint AS cached_tokens,
       sum(reasoning_tokens)::bigint AS reasoning_tokens, sum(cost_usd) AS cost_usd,
       sum(upstream_cost_usd) AS upstream_cost_usd, sum(billed_cost_usd) AS billed_cost_usd, max(user_id) AS user_id
FROM (SELECT organization_id, month, external_user_id, model, kind, requests, failed_or_aborted, prompt_tokens,
             completion_tokens, total_tokens, cached_tokens, reasoning_tokens, cost_usd, upstream_cost_usd, billed_cost_usd, user_id
      FROM usage_monthly_rollups
      UNION ALL
      SELECT organization_id, date_trunc('month', day::timestamp)::date, external_user_id, model, kind, requests, failed_or_aborted,
             prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, cost_usd, upstream_cost_usd, billed_cost_usd, user_id
      FROM usage_rollup_deltas) r
GROUP BY 1, 2, 3, 4, 5;

-- A compaction of the old definition that is running now would fold deltas into the daily rollups
-- only: wait for it, and keep the next one out until this transaction commits (readers and the
-- ledger's inserts, which write only the deltas, are not blocked).
LOCK TABLE usage_daily_rollups IN EXCLUSIVE MODE;

-- What is folded already, per month: the daily rollups summed. The deltas stay where they are and
-- are folded into both tables by the next compaction.
INSERT INTO usage_monthly_rollups
SELECT organization_id, date_trunc('month', day::timestamp)::date, external_user_id, model, kind,
       sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
       sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd), max(user_id)
FROM usage_daily_rollups
GROUP BY 1, 2, 3, 4, 5;

CREATE VIEW usage_org_daily_totals AS
SELECT organization_id, day, kind,
       sum(requests)::bigint AS requests, sum(failed_or_aborted)::bigint AS failed_or_aborted,
       sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
       sum(total_tokens)::bigint AS total_tokens, sum(cached_tokens)::bigint AS cached_tokens,
       sum(reasoning_tokens)::bigint AS reasoning_tokens, sum(cost_usd) AS cost_usd,
       sum(upstream_cost_usd) AS upstream_cost_usd, sum(billed_cost_usd) AS billed_cost_usd
FROM (SELECT organization_id, day, kind, requests, failed_or_aborted, prompt_tokens, completion_tokens, total_tokens,
             cached_tokens, reasoning_tokens, cost_usd, upstream_cost_usd, billed_cost_usd
      FROM usage_org_daily_rollups
      UNION ALL
      SELECT organization_id, day, kind, requests, failed_or_aborted, prompt_tokens, completion_tokens, total_tokens,
             cached_tokens, reasoning_tokens, cost_usd, upstream_cost_usd, billed_cost_usd
      FROM usage_rollup_deltas) r
GROUP BY 1, 2, 3;

INSERT INTO usage_org_daily_rollups
SELECT organization_id, day, kind,
       sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
       sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd)
FROM usage_daily_rollups
GROUP BY 1, 2, 3;

-- Moves every committed delta into usage_daily_rollups, usage_monthly_rollups and
-- usage_org_daily_rollups in one statement:
-- a delta is folded exactly once into each (a concurrent compaction skips the rows this one
-- deleted), upserts in key order.
CREATE OR REPLACE FUNCTION usage_rollup_compact () RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
BEGIN
  -- The deltas are summed once per daily key; the monthly and per-organization day sums are
  -- summed from those few rows, not from every delta again.
  WITH moved AS (DELETE FROM usage_rollup_deltas RETURNING *),
  daily AS MATERIALIZED (
    SELECT organization_id, day, external_user_id, model, kind,
           sum(requests) AS requests, sum(failed_or_aborted) AS failed_or_aborted, sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens, sum(total_tokens) AS total_tokens, sum(cached_tokens) AS cached_tokens,
           sum(reasoning_tokens) AS reasoning_tokens, sum(cost_usd) AS cost_usd, sum(upstream_cost_usd) AS upstream_cost_usd,
           sum(billed_cost_usd) AS billed_cost_usd, max(user_id) AS user_id
    FROM moved GROUP BY 1, 2, 3, 4, 5),
  folded AS (
    INSERT INTO usage_daily_rollups AS u
    SELECT * FROM daily
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (organization_id, day, external_user_id, model, kind) DO UPDATE SET
      requests = u.requests + excluded.requests,
      failed_or_aborted = u.failed_or_aborted + excluded.failed_or_aborted,
      prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
      completion_tokens = u.completion_tokens + excluded.completion_tokens,
      total_tokens = u.total_tokens + excluded.total_tokens,
      cached_tokens = u.cached_tokens + excluded.cached_tokens,
      reasoning_tokens = u.reasoning_tokens + excluded.reasoning_tokens,
      cost_usd = u.cost_usd + excluded.cost_usd,
      upstream_cost_usd = u.upstream_cost_usd + excluded.upstream_cost_usd,
      billed_cost_usd = u.billed_cost_usd + excluded.billed_cost_usd,
      user_id = greatest(u.user_id, excluded.user_id)
    RETURNING 1),
  monthly AS (
    INSERT INTO usage_monthly_rollups AS u
    SELECT organization_id, date_trunc('month', day::timestamp)::date, external_user_id, model, kind,
           sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
           sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd), max(user_id)
    FROM daily GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (organization_id, month, external_user_id, model, kind) DO UPDATE SET
      requests = u.requests + excluded.requests,
      failed_or_aborted = u.failed_or_aborted + excluded.failed_or_aborted,
      prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
      completion_tokens = u.completion_tokens + excluded.completion_tokens,
      total_tokens = u.total_tokens + excluded.total_tokens,
      cached_tokens = u.cached_tokens + excluded.cached_tokens,
      reasoning_tokens = u.reasoning_tokens + excluded.reasoning_tokens,
      cost_usd = u.cost_usd + excluded.cost_usd,
      upstream_cost_usd = u.upstream_cost_usd + excluded.upstream_cost_usd,
      billed_cost_usd = u.billed_cost_usd + excluded.billed_cost_usd,
      user_id = greatest(u.user_id, excluded.user_id)
    RETURNING 1),
  org_daily AS (
    INSERT INTO usage_org_daily_rollups AS u
    SELECT organization_id, day, kind,
           sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
           sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd)
    FROM daily GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (organization_id, day, kind) DO UPDATE SET
      requests = u.requests + excluded.requests,
      failed_or_aborted = u.failed_or_aborted + excluded.failed_or_aborted,
      prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
      completion_tokens = u.completion_tokens + excluded.completion_tokens,
      total_tokens = u.total_tokens + excluded.total_tokens,
      cached_tokens = u.cached_tokens + excluded.cached_tokens,
      reasoning_tokens = u.reasoning_tokens + excluded.reasoning_tokens,
      cost_usd = u.cost_usd + excluded.cost_usd,
      upstream_cost_usd = u.upstream_cost_usd + excluded.upstream_cost_usd,
      billed_cost_usd = u.billed_cost_usd + excluded.billed_cost_usd
    RETURNING 1)
  -- Every data-modifying WITH runs to completion whether read or not; the count is the daily rows'.
  SELECT (SELECT count(*) FROM folded) INTO n;
  RETURN n;
END $$;

CREATE INDEX usage_events_org_model_created ON usage_events (organization_id, model, created_at, event_id);
CREATE INDEX usage_events_org_served_model_created ON usage_events (organization_id, served_model, created_at, event_id)
  WHERE served_model IS DISTINCT FROM model;

CREATE INDEX usage_events_org_not_ok_sums ON usage_events (organization_id, created_at)
  INCLUDE (outcome, external_user_id, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, total_tokens, cost_usd, billed_cost_usd)
  WHERE outcome <> 'ok';
DROP INDEX usage_events_org_not_ok;
