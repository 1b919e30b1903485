-- Reports by group (Open WebUI groups: usage_events.groups, migration 017) at the speed of the
-- other reports, without making the ledger's inserts dearer for rows that carry no group.
--
-- * usage_group_daily_rollups holds the sums per (organization, day, group, user, model, kind):
--   the daily rollups' key with the group in it. A row in two groups is in both groups' sums, so
--   a group's report counts each of its members' requests, and the organization's total (read
--   from the other rollups) counts a request once whatever its groups. The sums over groups can
--   therefore exceed the organization's total; every place that shows them says so.
-- * Written like the other rollups: each insert's trigger appends the grouped rows' sums to
--   usage_group_rollup_deltas (no index, no update), once per group of each row, and
--   usage_rollup_compact() folds them in every few seconds. Rows without groups add nothing: the
--   step filters them out of the statement's own rows, so a deployment that sends no groups pays
--   one scan of the statement's transition table per batch and nothing per row.
-- * A query on usage_events with an index on groups (GIN) was the other way: it costs a GIN entry
--   per inserted row, and a month's group report would still read every grouped row of the month
--   (seconds at 10 million rows, where the rollups answer in milliseconds).
-- * usage_group_monthly_rollups holds the same sums per calendar month, folded by the same
--   compaction from the same deltas (the insert path is unchanged by it): a month or a year of
--   groups reads whole months there, and only the days around them from the daily table.
-- * Readers add the deltas not folded yet, as for the other rollups: exact at every moment.
-- * spend_per_group_month is the psql view of a group's month.

CREATE TABLE usage_group_daily_rollups (
  organization_id   text NOT NULL,
  day               date NOT NULL,                 -- UTC day of created_at
  group_id          text NOT NULL,
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
  PRIMARY KEY (organization_id, day, group_id, external_user_id, model, kind)
);
-- One group's days (the group=ID filter, the group's page).
CREATE INDEX usage_group_daily_rollups_group ON usage_group_daily_rollups (organization_id, group_id, day);

CREATE TABLE usage_group_monthly_rollups (
  organization_id   text NOT NULL,
  month             date NOT NULL,                 -- first day of the UTC month of created_at
  group_id          text NOT NULL,
  external_user_id  text NOT NULL,
  model             text NOT NULL,
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
  PRIMARY KEY (organization_id, month, group_id, external_user_id, model, kind)
);
CREATE INDEX usage_group_monthly_rollups_group ON usage_group_monthly_rollups (organization_id, group_id, month);

CREATE TABLE usage_group_rollup_deltas (LIKE usage_group_daily_rollups);

-- Rows written before this migration that already name groups (none unless something wrote the
-- column since migration 017): folded in now, so the reports cover them.
INSERT INTO usage_group_daily_rollups
SELECT organization_id, (created_at AT TIME ZONE 'UTC')::date, g.group_id, external_user_id, coalesce(served_model, model, ''), kind,
       count(*), count(*) FILTER (WHERE outcome <> 'ok'),
       coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0),
       coalesce(sum(cached_tokens), 0), coalesce(sum(reasoning_tokens), 0),
       coalesce(sum(cost_usd), 0), coalesce(sum(upstream_cost_usd), 0), coalesce(sum(billed_cost_usd), 0), max(user_id)
FROM usage_events e CROSS JOIN LATERAL unnest(e.groups) AS g(group_id)
WHERE cardinality(e.groups) > 0
GROUP BY 1, 2, 3, 4, 5, 6;

INSERT INTO usage_group_monthly_rollups
SELECT organization_id, date_trunc('month', day::timestamp)::date, group_id, external_user_id, model, kind,
       sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
       sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd), max(user_id)
FROM usage_group_daily_rollups
GROUP BY 1, 2, 3, 4, 5, 6;

-- A group's month, as people read it in psql. members: the users with usage in that group that
-- month. A request made by a member of two groups is in both groups' lines; spend_per_user_month
-- and the statement's organization total count it once.
CREATE VIEW spend_per_group_month AS
SELECT organization_id,
       month,
       group_id,
       count(DISTINCT external_user_id)::bigint        AS members,
       sum(requests)::bigint                           AS requests,
       sum(prompt_tokens)::bigint                      AS prompt_tokens,
       sum(completion_tokens)::bigint                  AS completion_tokens,
       trim_scale(coalesce(sum(cost_usd), 0))          AS cost_usd,
       trim_scale(coalesce(sum(billed_cost_usd), 0))   AS billed_cost_usd
FROM (SELECT organization_id, month, group_id, external_user_id, requests, prompt_tokens, completion_tokens, cost_usd, billed_cost_usd
      FROM usage_group_monthly_rollups
      UNION ALL
      SELECT organization_id, date_trunc('month', day::timestamp)::date, group_id, external_user_id, requests, prompt_tokens,
             completion_tokens, cost_usd, billed_cost_usd
      FROM usage_group_rollup_deltas) r
GROUP BY 1, 2, 3;
