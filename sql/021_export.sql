-- The export of committed ledger rows to billing and telemetry receivers (src/export/,
-- docs/export.md). One exporter per organization and sink reads usage_events in a fixed order
-- and remembers how far it got.
--
-- * usage_events.export_xid: the id of the transaction that inserted the row. Rows commit out of
--   order (several replicas batch at once, the journal replays old rows after a crash), so
--   neither created_at nor a sequence says which rows may still appear below a position. A
--   transaction id does: once pg_snapshot_xmin() of a fresh snapshot is above X, every
--   transaction below X has ended, so every row it wrote is visible now and no row with a lower
--   export_xid can commit later. The exporter only reads below that horizon. The default is
--   evaluated once per inserting transaction (its id is fixed), so a row costs 8 bytes and no
--   sequence call. Added without a default first, then given one: no partition is rewritten;
--   the rows already there keep NULL, all committed, and are read first, in (created_at,
--   event_id) order.
-- * A BRIN index: transaction ids grow with the heap's append order, so block ranges summarize
--   them well, and an insert pays almost nothing for it (a btree entry per row would cost the
--   ledger's batches more than the column).
ALTER TABLE usage_events ADD COLUMN IF NOT EXISTS export_xid bigint;
ALTER TABLE usage_events ALTER COLUMN export_xid SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX IF NOT EXISTS usage_events_export_xid ON usage_events USING brin (export_xid);

-- Where each sink is: every row of the organization before (xid, created_at, event_id) in the
-- export order (coalesce(export_xid, 0), created_at, event_id) is acknowledged or set aside.
-- The counters are what the sink has done since it started, for `export status`.
CREATE TABLE IF NOT EXISTS export_cursors (
  organization_id text NOT NULL,
  sink text NOT NULL,
  xid bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT '-infinity',
  event_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
  rows_sent bigint NOT NULL DEFAULT 0,
  rows_set_aside bigint NOT NULL DEFAULT 0,
  failures bigint NOT NULL DEFAULT 0,
  last_sent_at timestamptz,
  last_error text,
  last_error_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, sink)
);

-- One active exporter per organization and sink across replicas. A holder renews expires_at
-- while it works; when it dies the lease expires and the next taker bumps `token`. Every write
-- of the cursor locks this row and checks holder and token in the same transaction, so a holder
-- that lost its lease (paused, partitioned) cannot move the cursor: fencing.
CREATE TABLE IF NOT EXISTS export_leases (
  organization_id text NOT NULL,
  sink text NOT NULL,
  holder text NOT NULL,
  token bigint NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (organization_id, sink)
);

-- Rows acknowledged past the cursor (a batch whose later rows went through while an earlier one
-- waits for a retry): never resent; deleted once the cursor passes them.
CREATE TABLE IF NOT EXISTS export_acks (
  organization_id text NOT NULL,
  sink text NOT NULL,
  xid bigint NOT NULL,
  created_at timestamptz NOT NULL,
  event_id uuid NOT NULL,
  PRIMARY KEY (organization_id, sink, event_id)
);

-- Rows a receiver refused for good, or that it cannot take (Stripe: older than it accepts), with
-- the reason. They do not block the rest; `export replay` can send them again on purpose.
CREATE TABLE IF NOT EXISTS export_set_aside (
  organization_id text NOT NULL,
  sink text NOT NULL,
  event_id uuid NOT NULL,
  row_created_at timestamptz NOT NULL,
  reason text NOT NULL,
  set_aside_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, sink, event_id)
);

-- The Stripe sink's running totals per customer and calendar month (UTC) of the row: the exact
-- billed micro-USD of the rows it delivered, and the integer units it sent for them. Each row
-- is sent as round(total after it) - units sent before it, so units never drift from the exact
-- total by more than half a unit per customer and month (docs/export.md, "Rounding").
CREATE TABLE IF NOT EXISTS export_stripe_totals (
  organization_id text NOT NULL,
  sink text NOT NULL,
  stripe_customer_id text NOT NULL,
  month date NOT NULL,
  exact_units numeric NOT NULL DEFAULT 0,
  sent_units bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (organization_id, sink, stripe_customer_id, month)
);

-- Which Stripe customer is billed for a row: the row's user's own, else its API key's, else its
-- first group's (in the row's sorted group order) that has one, else the organization's
-- (subject '').
CREATE TABLE IF NOT EXISTS billing_customers (
  organization_id text NOT NULL,
  scope text NOT NULL CHECK (scope IN ('organization', 'user', 'key', 'group')),
  subject text NOT NULL,
  stripe_customer_id text NOT NULL CHECK (stripe_customer_id ~ '^cus_[A-Za-z0-9]{1,250}$'),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, scope, subject),
  CHECK ((scope = 'organization') = (subject = ''))
);
