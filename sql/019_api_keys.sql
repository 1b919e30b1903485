-- API keys for apps (README "API keys for apps"): each app gets a key of its own, with its own
-- user, groups, rate limit, model list and expiry; its budget is a `budgets` row of scope 'key'.
--
-- * The secret (`upk_` and 43 characters) is never stored: secret_hash is the hex SHA-256 of it,
--   and prefix its first characters, for people to tell keys apart. A secret is 256 random bits,
--   so an unsalted hash is as strong as the secret itself and can be looked up directly.
-- * A key is revoked by setting revoked_at; the row stays, so reports and the audit trail can
--   still name it. Rows are never deleted by the sidecar.
-- * last_used_at is written in batches (once per API_KEYS_REFRESH_MS per replica), not per request.
CREATE TABLE IF NOT EXISTS api_keys (
  id              text PRIMARY KEY,
  organization_id text NOT NULL REFERENCES organizations(id),
  name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  prefix          text NOT NULL,
  secret_hash     text NOT NULL UNIQUE CHECK (secret_hash ~ '^[0-9a-f]{64}$'),
  user_id         text,
  groups          text[] NOT NULL DEFAULT '{}',
  rpm             integer CHECK (rpm > 0),
  models          text[],
  expires_at      timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now(),
  last_used_at    timestamptz,
  revoked_at      timestamptz
);

-- The replicas' refresh reads the organization's live keys; the admin list pages by creation.
CREATE INDEX IF NOT EXISTS api_keys_org_created ON api_keys (organization_id, created_at, id);
