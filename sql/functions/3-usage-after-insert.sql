-- What every insert into usage_events does, in its own transaction, once per statement: one
-- trigger, one function, four steps in this order (no second trigger whose firing order by name
-- could matter). src/db/migrate.ts applies this file at every boot after the numbered migrations.
--
-- 0. Check that the statement's organizations exist: usage_events keeps its reference to
--    organizations without a foreign key, whose per-row check was 12% of a 2,000-row ledger
--    batch's time (sql/010, BENCHMARKS.md "Ledger write throughput"). The same question, once
--    per distinct organization, raising the foreign key's own SQLSTATE (23503), so the ledger
--    treats a missing organization as "retry later", never as bad data to set aside. First, so a
--    refused batch claims and settles nothing. Deleting or renaming an organization that has usage
--    is refused by organizations_keep_usage (sql/functions/6-organizations.sql).
-- 1. Claim each new generation id in usage_generation_ids, in id order. A row whose id was
--    already claimed (or claimed twice in this statement) is a replay and is deleted again, so
--    the statement's net effect is exactly INSERT ... ON CONFLICT DO NOTHING's on a UNIQUE
--    (generation_id) (migration 007 explains why a side table); a concurrent replay waits on the
--    first claimer's entry. The common case (every id new) costs one count and no delete.
-- 2. Settle budgets (when the database has any budget or hold): each kept row's spend (its billed
--    cost, or the estimate of a row that has none: outcome 'interrupted', migration 012) is added
--    to the counters of the period of its created_at (the organization's, its user's, each of its
--    groups' that has a budget, its API key's if that has one); its reservation is deleted and
--    every counter it held released;
--    what the spend exceeds the reservation by is added to overrun_usd. A replay taken back in
--    step 1 releases its hold and counts nothing (its original row counted). Counters are
--    written by one upsert in key order, the order admissions lock them in: no deadlocks.
--    The organization's budget key is taken shared first: a recount (sql/functions/2-budgets.sql)
--    holds it exclusively, so this either commits before the recount reads or waits for it and
--    then sees the budget it wrote.
-- 3. Append the kept rows' sums to usage_rollup_deltas (usage_rollup_select's SELECT, written out
--    for the plan cache; `usage-proxy verify` would show any drift between the two).
-- 4. Append the kept rows that name groups to usage_group_rollup_deltas, once per group of each
--    row (sql/023): a row in two groups counts in both groups' sums. Rows without groups are
--    filtered out here and add nothing.
CREATE OR REPLACE FUNCTION usage_after_insert () RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  orgs text[];
  locked bigint;
  any_groups boolean;
  claimed text[];
  n_claimed bigint;
  with_id bigint;
  losers uuid[] := '{}';
  replay record;
  missing text;
BEGIN
  -- What the steps ask of the statement as a whole, in one pass over the transition table (each
  -- pass reads every row of it again): its organizations (sorted: the lock order below), how many
  -- rows carry a generation id, whether any row names a group.
  SELECT coalesce(array_agg(DISTINCT organization_id ORDER BY organization_id), '{}'), count(generation_id), coalesce(bool_or(cardinality(groups) > 0), false)
    INTO orgs, with_id, any_groups FROM inserted_rows;

  -- 0. the organizations exist. FOR KEY SHARE is the lock the foreign key took per row, once per
  -- organization: a concurrent DELETE of one of them waits for this transaction, then finds its
  -- usage and is refused (or, if it came first, this check finds the organization gone). Fewer
  -- rows locked than organizations named: one is missing, and which one is asked only then.
  PERFORM 1 FROM organizations o WHERE o.id = ANY (orgs) ORDER BY o.id FOR KEY SHARE;
  GET DIAGNOSTICS locked = ROW_COUNT;
  -- The lookup sees what committed since the lock: an organization deleted and created again
  -- meanwhile (one with no usage yet) is there, as it was for the foreign key.
  IF locked < cardinality(orgs) THEN
    SELECT m INTO missing FROM unnest(orgs) m WHERE NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = m) ORDER BY 1 LIMIT 1;
    IF missing IS NOT NULL THEN
      RAISE foreign_key_violation USING
        MESSAGE = format('insert into usage_events refers to organization %L, which does not exist', missing),
        TABLE = 'usage_events';
    END IF;
  END IF;

  -- 1. the generation-id claim. First as a plain INSERT, which costs a row less than ON CONFLICT's
  -- speculative insertion (no pre-check of the index, no confirmation record): when every id is
  -- new, which is nearly always, that is the whole claim, and every distinct id is this
  -- statement's. An id claimed already (a replay, or another replica's concurrent claim, which a
  -- plain INSERT waits for too) raises unique_violation: the block's subtransaction takes back
  -- its claims, and the claim is made again as before, ON CONFLICT DO NOTHING RETURNING the ids
  -- this statement won.
  BEGIN
    INSERT INTO usage_generation_ids (generation_id, created_at)
    SELECT DISTINCT ON (generation_id) generation_id, created_at FROM inserted_rows
    WHERE generation_id IS NOT NULL ORDER BY generation_id, event_id;
    GET DIAGNOSTICS n_claimed = ROW_COUNT;
    IF n_claimed < with_id THEN  -- an id twice in this statement: its first row (by event_id) stays
      SELECT coalesce(array_agg(DISTINCT generation_id), '{}') INTO claimed FROM inserted_rows WHERE generation_id IS NOT NULL;
    ELSE
      claimed := NULL;  -- every row's id claimed: no replay
    END IF;
  EXCEPTION WHEN unique_violation THEN
    WITH c AS (
      INSERT INTO usage_generation_ids (generation_id, created_at)
      SELECT DISTINCT ON (generation_id) generation_id, created_at FROM inserted_rows
      WHERE generation_id IS NOT NULL ORDER BY generation_id, event_id
      ON CONFLICT DO NOTHING RETURNING generation_id)
    SELECT coalesce(array_agg(generation_id), '{}') INTO claimed FROM c;
  END;
  IF claimed IS NOT NULL AND cardinality(claimed) < with_id THEN
    FOR replay IN
      SELECT i.event_id, i.created_at FROM inserted_rows i
      LEFT JOIN (SELECT DISTINCT ON (generation_id) generation_id, event_id FROM inserted_rows
                 WHERE generation_id IS NOT NULL ORDER BY generation_id, event_id) f
        ON f.event_id = i.event_id AND f.generation_id = ANY (claimed)
      WHERE i.generation_id IS NOT NULL AND f.event_id IS NULL
    LOOP
      DELETE FROM usage_events WHERE event_id = replay.event_id AND created_at = replay.created_at;
      losers := losers || replay.event_id;
    END LOOP;
  END IF;

  -- 2. budget settlement
  PERFORM pg_advisory_xact_lock_shared(727361002, budget_org_lock_key(o)) FROM (SELECT unnest(orgs) AS o ORDER BY 1) x;
  IF EXISTS (SELECT 1 FROM budgets WHERE limit_usd IS NOT NULL) OR EXISTS (SELECT 1 FROM budget_reservations) THEN
    WITH released AS (
      DELETE FROM budget_reservations r USING inserted_rows n WHERE r.event_id = n.event_id
      RETURNING r.*
    ), spend AS (
      SELECT n.organization_id, n.user_id, n.groups, n.api_key_id, n.created_at, coalesce(n.billed_cost_usd, n.estimated_cost_usd, 0) AS amount, rel.amount_usd AS held
        FROM inserted_rows n LEFT JOIN released rel ON rel.event_id = n.event_id
       WHERE NOT (n.event_id = ANY (losers))
    ), kept AS (
      SELECT organization_id, user_id, groups, api_key_id, created_at, amount, greatest(amount - coalesce(held, amount), 0) AS overrun
        FROM spend WHERE amount <> 0
    ), periods AS (
      SELECT DISTINCT organization_id, CASE scope WHEN 'organization' THEN 'organization' ELSE 'user' END AS scope, period
        FROM budgets WHERE limit_usd IS NOT NULL AND scope IN ('organization', 'user', 'default-user')
    ), subjects AS (
      -- Group and key budgets count only their own subjects' rows.
      SELECT organization_id, scope, user_id, period FROM budgets WHERE scope IN ('group', 'key') AND limit_usd IS NOT NULL
    ), deltas AS (
      SELECT r.organization_id, h.scope, h.user_id, h.period, h.period_start, 0::numeric AS spent, -r.amount_usd AS reserved, 0::numeric AS overrun
        FROM released r CROSS JOIN LATERAL budget_held(r.user_id, r.org_period, r.org_period_start, r.user_period, r.user_period_start,
                                                       r.held_scopes, r.held_subjects, r.held_periods, r.held_starts) h
      UNION ALL
      SELECT k.organization_id, 'group', g.g, b.period, budget_period_start(b.period, k.created_at), k.amount, 0, k.overrun
        FROM kept k CROSS JOIN LATERAL (SELECT DISTINCT x AS g FROM unnest(k.groups) x) g
        JOIN subjects b ON b.organization_id = k.organization_id AND b.scope = 'group' AND b.user_id = g.g
      UNION ALL
      SELECT k.organization_id, 'key', k.api_key_id, b.period, budget_period_start(b.period, k.created_at), k.amount, 0, k.overrun
        FROM kept k JOIN subjects b ON b.organization_id = k.organization_id AND b.scope = 'key' AND b.user_id = k.api_key_id
      UNION ALL
      SELECT k.organization_id, 'organization', '', p.period, budget_period_start(p.period, k.created_at), k.amount, 0, k.overrun
        FROM kept k JOIN periods p ON p.organization_id = k.organization_id AND p.scope = 'organization'
      UNION ALL
      SELECT k.organization_id, 'user', k.user_id, p.period, budget_period_start(p.period, k.created_at), k.amount, 0, k.overrun
        FROM kept k JOIN periods p ON p.organization_id = k.organization_id AND p.scope = 'user'
       WHERE k.user_id IS NOT NULL
    )
    INSERT INTO budget_counters AS c (organization_id, scope, user_id, period, period_start, spent_usd, reserved_usd, overrun_usd)
    SELECT organization_id, scope, user_id, period, period_start, sum(spent), sum(reserved), sum(overrun)
      FROM deltas GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (organization_id, scope, user_id, period, period_start) DO UPDATE
      SET spent_usd = c.spent_usd + excluded.spent_usd,
          reserved_usd = greatest(c.reserved_usd + excluded.reserved_usd, 0),
          overrun_usd = c.overrun_usd + excluded.overrun_usd;
  END IF;

  -- 3. the rollups
  INSERT INTO usage_rollup_deltas
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
    FROM inserted_rows
    WHERE cardinality(losers) = 0 OR NOT (event_id = ANY (losers))
    GROUP BY 1, 2, 3, 4, 5;

  -- 4. the group rollups (only when a row names a group: most statements have none)
  IF any_groups THEN
    INSERT INTO usage_group_rollup_deltas
      SELECT organization_id, (created_at AT TIME ZONE 'UTC')::date AS day, g.group_id, external_user_id,
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
      FROM inserted_rows i CROSS JOIN LATERAL unnest(i.groups) AS g(group_id)
      WHERE cardinality(i.groups) > 0 AND (cardinality(losers) = 0 OR NOT (i.event_id = ANY (losers)))
      GROUP BY 1, 2, 3, 4, 5, 6;
  END IF;
  RETURN NULL;
END $$;

SELECT ensure_triggers('usage_events', 'usage_after_insert', ARRAY['usage_events_after_insert'], ARRAY[
  'CREATE TRIGGER usage_events_after_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS inserted_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_after_insert()']);
