-- The audit trail: every change made through the admin plane or seeded from the environment
-- (budgets, keys, groups, allowlists, billing customers, forgetting a user), appended once.
--
-- * `actor` is who: `env`, `cli`, or a fingerprint of the admin credential (never the credential).
-- * `before` and `after` are the value as the admin API shows it, null where there was none.
-- * Rows are only appended: the trigger below refuses UPDATE and DELETE of any row, so nothing in
--   the admin API (or a bug in it) can edit the trail. Forgetting a user is the one rewrite, and it
--   goes through forget_user_in_audit(), which the trigger lets through by a transaction-local
--   setting, replacing the user's id by its pseudonym and nothing else.
CREATE TABLE IF NOT EXISTS audit_log (
  id bigserial PRIMARY KEY,
  organization_id text NOT NULL,
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  actor text NOT NULL,
  action text NOT NULL,
  target text NOT NULL,
  before jsonb,
  after jsonb
);

CREATE INDEX IF NOT EXISTS audit_log_org_id ON audit_log (organization_id, id DESC);
