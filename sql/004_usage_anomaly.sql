-- What was wrong with the numbers OpenRouter sent for a row (a negative or absurd cost, a token
-- count no request can have), in words. Such a number is not stored (its column stays NULL), but
-- the row is: billing sees the generation and why its figures are missing. NULL: nothing was off.
ALTER TABLE usage_events ADD COLUMN anomaly text;
