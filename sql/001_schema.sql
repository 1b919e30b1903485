-- The billing interface: these three tables and their column names are documented in README.md.
-- Money is numeric end to end; nothing here is a float.

CREATE TABLE organizations (
  id                  text PRIMARY KEY,            -- OPENROUTER_EXTERNAL_USER, e.g. mai_client_63a4eb6d
  name                text NOT NULL,
  markup_percent      numeric(9,4) NOT NULL DEFAULT 0 CHECK (markup_percent >= 0),
  api_key_fingerprint text,                        -- sha256 prefix of the OpenRouter key, never the key
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_mappings (
  organization_id  text NOT NULL REFERENCES organizations(id),
  user_id          text NOT NULL,                  -- the chat app's own user id
  external_user_id text NOT NULL,                  -- what OpenRouter sees as `user`
  user_name        text,
  user_email       text,
  user_role        text,
  first_seen_at    timestamptz NOT NULL DEFAULT now(),
  last_seen_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, user_id)
);
CREATE INDEX user_mappings_external_user_id ON user_mappings (external_user_id);

CREATE TABLE usage_events (
  event_id          uuid PRIMARY KEY,              -- minted by the sidecar: the replay key when no generation id exists
  generation_id     text UNIQUE,                   -- OpenRouter's gen-...; NULL only when OpenRouter gave none (errors before routing)
  organization_id   text NOT NULL REFERENCES organizations(id),
  user_id           text,
  external_user_id  text NOT NULL,
  endpoint          text NOT NULL,                 -- chat/completions, embeddings, responses, ...
  model             text,                          -- as requested
  served_model      text,                          -- as answered
  provider          text,
  streamed          boolean NOT NULL,
  status            integer NOT NULL,              -- HTTP status the client saw
  outcome           text NOT NULL,                 -- ok | upstream_error | stream_error | client_aborted | interrupted | upstream_timeout | incomplete
  finish_reason     text,
  error_message     text,
  usage_source      text NOT NULL,                 -- inline | generation | none
  prompt_tokens     integer,
  completion_tokens integer,
  total_tokens      integer,
  cached_tokens     integer,
  reasoning_tokens  integer,
  cost_usd          numeric,                       -- exactly what OpenRouter charged (credits = USD); NULL when nothing was charged or known
  upstream_cost_usd numeric,                       -- BYOK: what the provider charged
  is_byok           boolean,
  markup_percent    numeric(9,4) NOT NULL,         -- the organization's markup when the request was made
  billed_cost_usd   numeric GENERATED ALWAYS AS (cost_usd + cost_usd * markup_percent / 100) STORED,
  latency_ms        numeric(12,3),                 -- upstream dispatch to last byte
  ttfb_ms           numeric(12,3),                 -- upstream dispatch to response headers
  chat_id           text,
  created_at        timestamptz NOT NULL,          -- when the request arrived
  recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_events_org_created ON usage_events (organization_id, created_at);
CREATE INDEX usage_events_user_created ON usage_events (organization_id, external_user_id, created_at);
