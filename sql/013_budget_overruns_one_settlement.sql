-- Tables and indexes for the money functions in sql/functions/ (their current definitions live
-- there and are re-applied at every boot; this file only changes the schema they work on).
--
-- * overrun_usd: what real costs exceeded their reservations by, per counter and period, so an
--   operator sees estimates going wrong (budget API, /metrics). Kept by settlement.
-- * usage_events_estimated: the few rows that count toward budgets at their estimate
--   (outcome 'interrupted' with no cost, migration 012), read by the recount from this index
--   alone.
-- * Settlement moves into the one after-insert function (sql/functions/usage-after-insert.sql):
--   the trigger of its own, whose correctness depended on firing after the generation-id claim
--   (trigger names), goes.
-- * budget_reserve takes the record's created_at (p_at) and budget_sweep the holds of requests
--   still running: the old signatures go so the new ones are the only ones.

ALTER TABLE budget_counters ADD COLUMN overrun_usd numeric NOT NULL DEFAULT 0;

CREATE INDEX usage_events_estimated ON usage_events (organization_id, created_at)
  INCLUDE (user_id, cost_usd, estimated_cost_usd) WHERE estimated_cost_usd IS NOT NULL;

DROP TRIGGER usage_events_settle_budgets ON usage_events;
DROP FUNCTION budget_settle();
DROP FUNCTION budget_reserve(text, text, uuid, numeric, timestamptz, interval);
DROP FUNCTION budget_sweep(integer);
