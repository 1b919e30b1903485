-- The daily, monthly and per-organization rollups (tables in sql/007 and sql/009): what a rollup
-- row is, and how the deltas every insert appends (3-usage-after-insert.sql, step 3) are folded.
-- src/usage/ledger/rollups.ts compacts; src/usage/reports/verify.ts checks the rollups against
-- the raw rows. src/db/migrate.ts applies this file at every boot after the numbered migrations.

-- One definition of a rollup row from raw rows: `usage-proxy verify` checks the rollups with it,
-- and the after-insert function's step 3 is this SELECT written out for the plan cache (verify
-- shows any drift between the two).
CREATE OR REPLACE FUNCTION usage_rollup_select (source text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT format($q$
    SELECT organization_id, (created_at AT TIME ZONE 'UTC')::date AS day, external_user_id,
           coalesce(served_model, model, '') AS model, kind,
           count(*) AS requests,
           count(*) FILTER (WHERE outcome <> 'ok') AS failed_or_aborted,
           coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(completion_tokens), 0) AS completion_tokens,
           coalesce(sum(total_tokens), 0) AS total_tokens,
           coalesce(sum(cached_tokens), 0) AS cached_tokens,
           coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
           coalesce(sum(cost_usd), 0) AS cost_usd,
           coalesce(sum(upstream_cost_usd), 0) AS upstream_cost_usd,
           coalesce(sum(billed_cost_usd), 0) AS billed_cost_usd,
           max(user_id) AS user_id
    FROM %s
    GROUP BY 1, 2, 3, 4, 5$q$, source)
$$;

-- Moves every committed delta into usage_daily_rollups, usage_monthly_rollups and
-- usage_org_daily_rollups in one statement (and the group deltas into usage_group_daily_rollups
-- and usage_group_monthly_rollups in a second): a delta is folded exactly once into each (a
-- concurrent compaction skips the rows this one deleted), upserts in key order.
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

  -- The group rollups' deltas (sql/023), folded the same way into the daily and monthly group
  -- rollups, in a second statement.
  WITH moved AS (DELETE FROM usage_group_rollup_deltas RETURNING *),
  daily AS MATERIALIZED (
    SELECT organization_id, day, group_id, external_user_id, model, kind,
           sum(requests) AS requests, sum(failed_or_aborted) AS failed_or_aborted, sum(prompt_tokens) AS prompt_tokens,
           sum(completion_tokens) AS completion_tokens, sum(total_tokens) AS total_tokens, sum(cached_tokens) AS cached_tokens,
           sum(reasoning_tokens) AS reasoning_tokens, sum(cost_usd) AS cost_usd, sum(upstream_cost_usd) AS upstream_cost_usd,
           sum(billed_cost_usd) AS billed_cost_usd, max(user_id) AS user_id
    FROM moved GROUP BY 1, 2, 3, 4, 5, 6),
  folded AS (
    INSERT INTO usage_group_daily_rollups AS u
    SELECT * FROM daily
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (organization_id, day, group_id, external_user_id, model, kind) DO UPDATE SET
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
    RETURNING 1)
  INSERT INTO usage_group_monthly_rollups AS u
  SELECT organization_id, date_trunc('month', day::timestamp)::date, group_id, external_user_id, model, kind,
         sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
         sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd), max(user_id)
  FROM daily GROUP BY 1, 2, 3, 4, 5, 6
  ORDER BY 1, 2, 3, 4, 5, 6
  ON CONFLICT (organization_id, month, group_id, external_user_id, model, kind) DO UPDATE SET
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
    user_id = greatest(u.user_id, excluded.user_id);
  RETURN n;
END $$;
