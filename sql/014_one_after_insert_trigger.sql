-- The organization check runs as the first step of the one after-insert function
-- (sql/functions/3-usage-after-insert.sql), in an order written there: its own statement trigger,
-- whose place among the after-insert triggers was set by their names, goes with its function.
-- The function files re-applied after this migration, in the same transaction, put the check
-- back before any row can be inserted without it.
DROP TRIGGER usage_events_check_organizations ON usage_events;
DROP FUNCTION usage_events_check_organizations();
