-- Budgets for groups and API keys, and model allowlists per group. The functions that use these
-- tables are in sql/functions/2-budgets.sql and 3-usage-after-insert.sql.
--
-- * budgets and budget_counters gain the scopes 'group' (user_id holds the group id) and 'key'
--   (user_id holds the API key id). The column keeps its name so every psql query and view that
--   reads budgets keeps working; for those scopes it names the budget's subject, not a user.
-- * A reservation holds the counters of every budget that applies to its request: the
--   organization's and the user's in the columns they always had, every group's and the key's in
--   the held_* arrays (one element per counter, the four arrays side by side).
-- * budget_reserve_many returns which group or key refused (refused_subject): its result type
--   changes, so it is dropped here and created again by sql/functions/2-budgets.sql.
-- * model_allowlists: the models a group's members may use. A group without a row is not
--   restricted.

ALTER TABLE budgets DROP CONSTRAINT budgets_scope_check;
ALTER TABLE budgets ADD CONSTRAINT budgets_scope_check CHECK (scope IN ('organization', 'default-user', 'user', 'group', 'key'));
ALTER TABLE budgets DROP CONSTRAINT budgets_check;
ALTER TABLE budgets ADD CONSTRAINT budgets_check CHECK ((scope IN ('user', 'group', 'key')) = (user_id <> ''));

ALTER TABLE budget_counters DROP CONSTRAINT budget_counters_scope_check;
ALTER TABLE budget_counters ADD CONSTRAINT budget_counters_scope_check CHECK (scope IN ('organization', 'user', 'group', 'key'));

ALTER TABLE budget_reservations
  ADD COLUMN held_scopes   text[] NOT NULL DEFAULT '{}',
  ADD COLUMN held_subjects text[] NOT NULL DEFAULT '{}',
  ADD COLUMN held_periods  text[] NOT NULL DEFAULT '{}',
  ADD COLUMN held_starts   timestamptz[] NOT NULL DEFAULT '{}';

DROP FUNCTION IF EXISTS budget_reserve_many(jsonb, timestamptz, interval);
DROP FUNCTION IF EXISTS budget_reserve_many(jsonb, interval);

CREATE TABLE model_allowlists (
  organization_id text NOT NULL REFERENCES organizations(id),
  group_id        text NOT NULL CHECK (group_id <> ''),
  models          text[] NOT NULL,
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, group_id)
);
