-- Forgetting a user (README "Privacy"): the key that makes pseudonyms, and who was forgotten when.
--
-- * forget_secrets holds one random key per organization. A pseudonym is
--   'forgotten:' || the first 16 hex digits of sha256(key || organization || NUL || user id):
--   the same user always gets the same pseudonym (forgetting twice changes nothing), and nobody
--   can tell from a report, a CSV or an invoice whose it was. Whoever can read this table and
--   knows (or guesses) a user id can recompute it: the pseudonym protects the reports and exports,
--   not a database dump.
-- * forgotten_users names the pseudonyms, never the ids. A record of the user that was still
--   waiting in a journal or a ledger queue when the user was forgotten (created_at at or before
--   forgotten_at) lands under the pseudonym (forget_pending_row, sql/functions/8-forget.sql); a
--   request that arrives later under the same id is a new user.
CREATE TABLE IF NOT EXISTS forget_secrets (
  organization_id text PRIMARY KEY,
  secret          bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS forgotten_users (
  organization_id text NOT NULL,
  pseudonym       text NOT NULL,
  forgotten_at    timestamptz NOT NULL,
  PRIMARY KEY (organization_id, pseudonym)
);
CREATE INDEX IF NOT EXISTS forgotten_users_at ON forgotten_users (organization_id, forgotten_at);
