-- A record replayed under a new event_id with a generation id already written is taken back by
-- migration 007's statement trigger, which fires before this one (triggers fire in name order:
-- usage_events_after_insert, then usage_events_settle_budgets). Settlement saw the taken-back row
-- in its transition table all the same and counted its spend a second time. It now counts only
-- the rows still in the table; their reservations are released as before.
CREATE OR REPLACE FUNCTION budget_settle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  LOCK TABLE budget_counters IN ROW EXCLUSIVE MODE;
  IF NOT EXISTS (SELECT 1 FROM budgets WHERE limit_usd IS NOT NULL) AND NOT EXISTS (SELECT 1 FROM budget_reservations) THEN
    RETURN NULL;
  END IF;
  WITH released AS (
    DELETE FROM budget_reservations r USING new_rows n WHERE r.event_id = n.event_id
    RETURNING r.*
  ), kept AS (
    -- Rows the generation-id claim (usage_after_insert, which fires first) took back as replays
    -- are in new_rows but no longer in the table: their spend is already counted.
    SELECT n.* FROM new_rows n WHERE n.billed_cost_usd <> 0
       AND EXISTS (SELECT 1 FROM usage_events e WHERE e.event_id = n.event_id AND e.created_at = n.created_at)
  ), periods AS (
    SELECT DISTINCT organization_id, CASE scope WHEN 'organization' THEN 'organization' ELSE 'user' END AS scope, period
      FROM budgets WHERE limit_usd IS NOT NULL
  ), deltas AS (
    SELECT organization_id, 'organization' AS scope, '' AS user_id, org_period AS period, org_period_start AS period_start,
           0::numeric AS spent, -amount_usd AS reserved
      FROM released WHERE org_period IS NOT NULL
    UNION ALL
    SELECT organization_id, 'user', user_id, user_period, user_period_start, 0, -amount_usd
      FROM released WHERE user_period IS NOT NULL
    UNION ALL
    SELECT n.organization_id, 'organization', '', p.period, budget_period_start(p.period, n.created_at), n.billed_cost_usd, 0
      FROM kept n JOIN periods p ON p.organization_id = n.organization_id AND p.scope = 'organization' WHERE n.billed_cost_usd <> 0
    UNION ALL
    SELECT n.organization_id, 'user', n.user_id, p.period, budget_period_start(p.period, n.created_at), n.billed_cost_usd, 0
      FROM kept n JOIN periods p ON p.organization_id = n.organization_id AND p.scope = 'user'
     WHERE n.billed_cost_usd <> 0 AND n.user_id IS NOT NULL
  )
  INSERT INTO budget_counters AS c (organization_id, scope, user_id, period, period_start, spent_usd, reserved_usd)
  SELECT organization_id, scope, user_id, period, period_start, sum(spent), sum(reserved)
    FROM deltas GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
  ON CONFLICT (organization_id, scope, user_id, period, period_start) DO UPDATE
    SET spent_usd = c.spent_usd + excluded.spent_usd,
        reserved_usd = greatest(c.reserved_usd + excluded.reserved_usd, 0);
  RETURN NULL;
END
$$;
