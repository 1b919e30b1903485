-- Who a request was made as, beyond the user: the groups its user was in at that moment (Open
-- WebUI groups, from a header or a signed claim) and the API key that authenticated it (NULL for
-- PROXY_API_KEY, the chat app's key). A user's latest groups are kept with their mapping.
--
-- * groups is a sorted, duplicate-free array of group ids, '{}' for none: a row in two groups
--   counts in each group's report and once in the organization's total.
-- * Constant defaults: on PostgreSQL 11+ adding these columns rewrites no partition.
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS groups text[] NOT NULL DEFAULT '{}';
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS api_key_id text;
ALTER TABLE user_mappings ADD COLUMN IF NOT EXISTS groups text[] NOT NULL DEFAULT '{}';
