-- A request the sidecar sent but never saw end (SIGKILL, power cut) and whose generation id it
-- never learned has no cost anyone can look up. Its row carries the admission's estimate here
-- (billed USD, markup included): budgets count it at that amount, billing sees no cost.
-- NULL on every other row.
ALTER TABLE usage_events ADD COLUMN estimated_cost_usd numeric CHECK (estimated_cost_usd >= 0);
