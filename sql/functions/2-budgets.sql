-- Spend controls in Postgres: the current definition of every budget and rate-limit function and
-- of the trigger on budgets. src/db/migrate.ts applies this file at every boot, after the numbered
-- migrations, in their transaction and under their lock; the tables are in sql/006 and sql/013.
-- Settlement (a usage row's cost booked, its hold released) is in 3-usage-after-insert.sql.
--
-- Three rules every function here keeps:
-- * One clock per request: a request's hold and its spend are booked in the period of the
--   record's created_at (budget_reserve's p_at), never of whoever's clock runs the query.
-- * No session time zone: a period starts at a UTC midnight, whatever TimeZone the session has.
-- * One lock order: budget_counters rows are locked in key order (organization_id, scope,
--   user_id, period, period_start): an organization's counter before its users', users in
--   ascending order. Admission, settlement, release and recount all do, so none deadlocks.

-- Weeks start on Monday (ISO), everything in UTC; 'total' never resets.
CREATE OR REPLACE FUNCTION budget_period_start(p_period text, p_at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE p_period
    WHEN 'total' THEN timestamptz '1970-01-01 00:00:00+00'
    ELSE date_trunc(p_period, p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
  END
$$;

-- Where the period that starts at p_start ends ('total': never).
CREATE OR REPLACE FUNCTION budget_period_end(p_period text, p_start timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE p_period
    WHEN 'total' THEN timestamptz 'infinity'
    ELSE (p_start AT TIME ZONE 'UTC' + ('1 ' || p_period)::interval) AT TIME ZONE 'UTC'
  END
$$;

-- The key every settlement and recount of an organization shares: settlement takes it shared
-- (many at once), a recount exclusively (src: budget_recount below).
CREATE OR REPLACE FUNCTION budget_org_lock_key(p_org text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
  SELECT hashtext('usage-proxy budgets ' || p_org)
$$;

-- The budgets that apply to one request, each with the counter it is checked against: the
-- organization's, the user's own (else the default one, counted on the user's counter), each of
-- the request's groups' and its API key's. In counter key order (scope, then subject), the order
-- their counters are locked in.
CREATE OR REPLACE FUNCTION budget_applicable(p_org text, p_user text, p_groups text[], p_key text)
RETURNS TABLE (scope text, counter_scope text, subject text, limit_usd numeric, period text)
LANGUAGE sql STABLE AS $$
  SELECT a.scope, a.counter_scope, a.subject, a.limit_usd, a.period FROM (
    SELECT b.scope, b.scope AS counter_scope, b.user_id AS subject, b.limit_usd, b.period
      FROM budgets b WHERE b.organization_id = p_org AND b.limit_usd IS NOT NULL
       AND (b.scope = 'organization' OR (b.scope = 'group' AND b.user_id = ANY (p_groups)) OR (b.scope = 'key' AND b.user_id = p_key))
    UNION ALL
    (SELECT b.scope, 'user', p_user, b.limit_usd, b.period
       FROM budgets b WHERE p_user IS NOT NULL AND b.organization_id = p_org AND b.limit_usd IS NOT NULL
        AND ((b.scope = 'user' AND b.user_id = p_user) OR b.scope = 'default-user')
      ORDER BY b.scope DESC LIMIT 1)  -- 'user' before 'default-user'
  ) a
  ORDER BY a.counter_scope, a.subject
$$;

-- Which refusal a request is told about when several budgets refuse it: the widest first.
CREATE OR REPLACE FUNCTION budget_scope_rank(p_scope text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE p_scope WHEN 'organization' THEN 0 WHEN 'group' THEN 1 WHEN 'key' THEN 2 ELSE 3 END
$$;

-- The admission: one call. Locks the counter of every budget that applies, in key order (groups,
-- key, organization, user: the order of the scope names), refuses when the estimate does not fit
-- one of them (the widest is named: organization, then group, key, user), else holds it on every
-- one and records the reservation. p_at is the record's created_at: the hold sits in the period
-- its spend will be booked in. refused_subject names the group or key that refused.
CREATE OR REPLACE FUNCTION budget_reserve(p_org text, p_user text, p_groups text[], p_key text, p_event uuid, p_amount numeric, p_at timestamptz, p_ttl interval)
RETURNS TABLE (refused_scope text, limit_usd numeric, period text, period_start timestamptz, spent_usd numeric, reserved_usd numeric,
               org_limit numeric, org_spent numeric, org_period text, org_period_start timestamptz,
               user_scope text, user_limit numeric, user_spent numeric, user_period text, user_period_start timestamptz,
               refused_subject text)
LANGUAGE plpgsql AS $$
DECLARE
  a record;
  scopes text[] := '{}'; cscopes text[] := '{}'; subjects text[] := '{}'; limits numeric[] := '{}'; periods text[] := '{}';
  starts timestamptz[] := '{}'; spent numeric[] := '{}'; held numeric[] := '{}'; ranks integer[] := '{}';
  -- The groups' and the key's counters, as the reservation records them.
  h_scopes text[] := '{}'; h_subjects text[] := '{}'; h_periods text[] := '{}'; h_starts timestamptz[] := '{}';
  n integer;
  c budget_counters;
  k integer; refuse integer;
  o integer; u integer;
BEGIN
  -- The organization's counter is one hot row: waiting for a WAL flush while holding it would
  -- serialize every request on fsync. A reservation lost to a database crash only lets the
  -- requests then in flight run unheld; their spend still lands with their records.
  PERFORM set_config('synchronous_commit', 'off', true);
  FOR a IN SELECT * FROM budget_applicable(p_org, p_user, coalesce(p_groups, '{}'), p_key) LOOP
    scopes := scopes || a.scope; cscopes := cscopes || a.counter_scope; subjects := subjects || a.subject;
    limits := limits || a.limit_usd; periods := periods || a.period; starts := starts || budget_period_start(a.period, p_at);
    ranks := ranks || budget_scope_rank(a.scope);
    IF a.counter_scope IN ('group', 'key') THEN
      h_scopes := h_scopes || a.counter_scope; h_subjects := h_subjects || a.subject;
      h_periods := h_periods || a.period; h_starts := h_starts || budget_period_start(a.period, p_at);
    END IF;
  END LOOP;
  n := cardinality(scopes);
  IF n = 0 THEN
    RETURN;  -- no row: no budget applies
  END IF;
  o := array_position(cscopes, 'organization');
  u := array_position(cscopes, 'user');
  -- Everything that needs no lock first: the hot organization row is held as briefly as possible.
  INSERT INTO budget_reservations (event_id, organization_id, user_id, org_period, org_period_start, user_period, user_period_start,
                                   held_scopes, held_subjects, held_periods, held_starts, amount_usd, expires_at)
  VALUES (p_event, p_org, coalesce(p_user, ''), periods[o], starts[o], periods[u], starts[u],
          h_scopes, h_subjects, h_periods, h_starts, p_amount, now() + p_ttl);
  FOR k IN 1..n LOOP
    SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]
       AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;
    IF NOT FOUND THEN
      INSERT INTO budget_counters (organization_id, scope, user_id, period, period_start)
        VALUES (p_org, cscopes[k], subjects[k], periods[k], starts[k]) ON CONFLICT DO NOTHING;
      SELECT * INTO c FROM budget_counters x WHERE x.organization_id = p_org AND x.scope = cscopes[k] AND x.user_id = subjects[k]
         AND x.period = periods[k] AND x.period_start = starts[k] FOR UPDATE;
    END IF;
    spent := spent || c.spent_usd; held := held || c.reserved_usd;
  END LOOP;
  refuse := NULL;
  FOR k IN 1..n LOOP
    IF spent[k] + held[k] + p_amount > limits[k] AND (refuse IS NULL OR ranks[k] < ranks[refuse]) THEN refuse := k; END IF;
  END LOOP;
  IF refuse IS NOT NULL THEN
    DELETE FROM budget_reservations x WHERE x.event_id = p_event;
    RETURN QUERY SELECT scopes[refuse], limits[refuse], periods[refuse], starts[refuse], spent[refuse], held[refuse],
      limits[o], spent[o], periods[o], starts[o], scopes[u], limits[u], spent[u], periods[u], starts[u],
      CASE WHEN cscopes[refuse] IN ('group', 'key') THEN subjects[refuse] END;
    RETURN;
  END IF;
  FOR k IN 1..n LOOP
    UPDATE budget_counters x SET reserved_usd = x.reserved_usd + p_amount WHERE x.organization_id = p_org AND x.scope = cscopes[k]
       AND x.user_id = subjects[k] AND x.period = periods[k] AND x.period_start = starts[k];
  END LOOP;
  RETURN QUERY SELECT NULL::text, NULL::numeric, NULL::text, NULL::timestamptz, NULL::numeric, NULL::numeric,
    limits[o], spent[o], periods[o], starts[o], scopes[u], limits[u], spent[u], periods[u], starts[u], NULL::text;
END
$$;

-- The organization-and-user admission of the previous versions (and of psql sessions and tests
-- that name no group or key).
CREATE OR REPLACE FUNCTION budget_reserve(p_org text, p_user text, p_event uuid, p_amount numeric, p_at timestamptz, p_ttl interval)
RETURNS TABLE (refused_scope text, limit_usd numeric, period text, period_start timestamptz, spent_usd numeric, reserved_usd numeric,
               org_limit numeric, org_spent numeric, org_period text, org_period_start timestamptz,
               user_scope text, user_limit numeric, user_spent numeric, user_period text, user_period_start timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY SELECT r.refused_scope, r.limit_usd, r.period, r.period_start, r.spent_usd, r.reserved_usd, r.org_limit, r.org_spent,
      r.org_period, r.org_period_start, r.user_scope, r.user_limit, r.user_spent, r.user_period, r.user_period_start
    FROM budget_reserve(p_org, p_user, '{}'::text[], NULL::text, p_event, p_amount, p_at, p_ttl) r;
END
$$;

-- Many admissions in one round trip and one commit: a replica gathers the requests that arrive
-- together. Each item carries its record's created_at (`at`), and its `groups` and `key` when it
-- has them. Each item returns its row under its index `i`; an item without a row has no budget
-- that applies.
-- Lock order: a batch holds every lock it took until it commits, so its items' counters must be
-- taken in one key order across the whole batch. In the common batch (one organization period,
-- no group or key budget) items go in (organization, user, created_at) order: each takes the
-- organization's counter (held from the first item on), then its user's, in ascending order. A
-- batch that straddles a period boundary, or whose items have group or key budgets, first locks
-- every counter any of its items needs, in key order; the items then find them held.
CREATE OR REPLACE FUNCTION budget_reserve_many(p_items jsonb, p_ttl interval)
RETURNS TABLE (i integer, refused_scope text, limit_usd numeric, period text, period_start timestamptz, spent_usd numeric, reserved_usd numeric,
               org_limit numeric, org_spent numeric, org_period text, org_period_start timestamptz,
               user_scope text, user_limit numeric, user_spent numeric, user_period text, user_period_start timestamptz,
               refused_subject text)
LANGUAGE plpgsql AS $$
DECLARE item record;
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  IF EXISTS (SELECT 1 FROM jsonb_to_recordset(p_items) AS x(at timestamptz) WHERE x.at IS NULL) THEN
    RAISE EXCEPTION 'budget_reserve_many: every item needs its record''s created_at (at)';
  END IF;
  IF (SELECT count(DISTINCT (x.org, x.at)) FROM jsonb_to_recordset(p_items) AS x(org text, at timestamptz)) > 1
     OR EXISTS (SELECT 1 FROM jsonb_to_recordset(p_items) AS x(org text, groups text[], key text)
                  JOIN budgets b ON b.organization_id = x.org AND b.limit_usd IS NOT NULL
                   AND ((b.scope = 'group' AND b.user_id = ANY (x.groups)) OR (b.scope = 'key' AND b.user_id = x.key))) THEN
    INSERT INTO budget_counters (organization_id, scope, user_id, period, period_start)
    SELECT DISTINCT x.org, a.counter_scope, a.subject, a.period, budget_period_start(a.period, x.at)
      FROM jsonb_to_recordset(p_items) AS x(org text, usr text, groups text[], key text, at timestamptz)
      CROSS JOIN LATERAL budget_applicable(x.org, x.usr, coalesce(x.groups, '{}'), x.key) a
     ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM budget_counters c
     WHERE (c.organization_id, c.scope, c.user_id, c.period, c.period_start) IN (
       SELECT x.org, a.counter_scope, a.subject, a.period, budget_period_start(a.period, x.at)
         FROM jsonb_to_recordset(p_items) AS x(org text, usr text, groups text[], key text, at timestamptz)
         CROSS JOIN LATERAL budget_applicable(x.org, x.usr, coalesce(x.groups, '{}'), x.key) a)
     ORDER BY c.organization_id, c.scope, c.user_id, c.period, c.period_start
       FOR UPDATE;
  END IF;
  FOR item IN SELECT * FROM jsonb_to_recordset(p_items) AS x(i integer, org text, usr text, groups text[], key text, ev uuid, amount numeric, at timestamptz)
               ORDER BY x.org, x.usr NULLS FIRST, x.at, x.i LOOP
    RETURN QUERY SELECT item.i, r.* FROM budget_reserve(item.org, item.usr, coalesce(item.groups, '{}'), item.key, item.ev, item.amount, item.at, p_ttl) r;
  END LOOP;
END
$$;

-- The previous signature, for replicas of the previous version during a rolling upgrade: their
-- items are held in the period of their admission clock, as they were.
CREATE OR REPLACE FUNCTION budget_reserve_many(p_items jsonb, p_now timestamptz, p_ttl interval)
RETURNS TABLE (i integer, refused_scope text, limit_usd numeric, period text, period_start timestamptz, spent_usd numeric, reserved_usd numeric,
               org_limit numeric, org_spent numeric, org_period text, org_period_start timestamptz,
               user_scope text, user_limit numeric, user_spent numeric, user_period text, user_period_start timestamptz,
               refused_subject text)
LANGUAGE sql AS $$
  SELECT * FROM budget_reserve_many(
    (SELECT coalesce(jsonb_agg(x || jsonb_build_object('at', p_now)), '[]') FROM jsonb_array_elements(p_items) x), p_ttl)
$$;

-- Every counter a reservation holds: the organization's and the user's (columns of their own),
-- then the groups' and the key's (the held_* arrays).
CREATE OR REPLACE FUNCTION budget_held(p_user text, p_org_period text, p_org_start timestamptz, p_user_period text, p_user_start timestamptz,
                                       p_scopes text[], p_subjects text[], p_periods text[], p_starts timestamptz[])
RETURNS TABLE (scope text, user_id text, period text, period_start timestamptz) LANGUAGE sql IMMUTABLE AS $$
  SELECT 'organization', '', p_org_period, p_org_start WHERE p_org_period IS NOT NULL
  UNION ALL
  SELECT 'user', p_user, p_user_period, p_user_start WHERE p_user_period IS NOT NULL
  UNION ALL
  SELECT * FROM unnest(p_scopes, p_subjects, p_periods, p_starts)
$$;

-- Lets go of holds whose record will not come (or has not come in time): each reservation is
-- deleted once (a concurrent settlement or release that deleted it first wins), and what it held
-- is taken off its counters, locked in key order. Returns how many were released.
CREATE OR REPLACE FUNCTION budget_release(p_events uuid[]) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE n integer;
BEGIN
  WITH released AS (
    DELETE FROM budget_reservations WHERE event_id = ANY (p_events) RETURNING *
  ), deltas AS (
    SELECT r.organization_id, h.scope, h.user_id, h.period, h.period_start, r.amount_usd
      FROM released r CROSS JOIN LATERAL budget_held(r.user_id, r.org_period, r.org_period_start, r.user_period, r.user_period_start,
                                                     r.held_scopes, r.held_subjects, r.held_periods, r.held_starts) h
  ), sums AS (
    SELECT organization_id, scope, user_id, period, period_start, sum(amount_usd) AS amount FROM deltas GROUP BY 1, 2, 3, 4, 5
  ), upd AS (
    -- An upsert, not an UPDATE joined to the sums: it takes the rows' locks in the order given.
    INSERT INTO budget_counters AS c (organization_id, scope, user_id, period, period_start)
    SELECT organization_id, scope, user_id, period, period_start FROM sums ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (organization_id, scope, user_id, period, period_start) DO UPDATE
      SET reserved_usd = greatest(c.reserved_usd - (SELECT s.amount FROM sums s WHERE s.organization_id = c.organization_id
             AND s.scope = c.scope AND s.user_id = c.user_id AND s.period = c.period AND s.period_start = c.period_start), 0)
    RETURNING 1
  )
  SELECT count(*) INTO n FROM released;
  RETURN n;
END
$$;

-- Expired reservations (their request's record never arrived) released, oldest first, by whichever
-- sidecar gets there: SKIP LOCKED keeps sweepers of several replicas out of each other's way.
-- p_live: the holds of requests the calling sidecar still runs. A sidecar renews its live holds
-- well within their TTL, so another replica's live hold is not expired either.
CREATE OR REPLACE FUNCTION budget_sweep(p_limit integer, p_live uuid[] DEFAULT '{}') RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  expired uuid[];
  n integer;
BEGIN
  SELECT coalesce(array_agg(event_id), '{}') INTO expired FROM (
    SELECT event_id FROM budget_reservations WHERE expires_at < now() AND NOT (event_id = ANY (p_live))
     ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED) e;
  n := budget_release(expired);
  DELETE FROM rate_leases WHERE expires_at < now();
  RETURN n;
END
$$;

-- What an organization's users spent from p_since (a period start: a UTC midnight) until p_until
-- (the period's end, or infinity), per user
-- (NULL: rows with no app user); only p_user's when given. Billed cost, and the estimate of a row
-- that has no cost (outcome 'interrupted', migration 012). Read without scanning the ledger:
-- * whole months before the current one: usage_monthly_rollups (folded rows);
-- * other whole days before today: usage_daily_rollups (folded rows);
-- * every day before today: usage_rollup_deltas not folded yet (a few seconds' worth);
-- * today, from its UTC midnight: usage_events by (organization_id, created_at);
-- * estimates: the partial index usage_events_estimated.
-- One statement, one snapshot: a compaction moving deltas into the rollups meanwhile is seen
-- entirely or not at all. A rollup row's user_id is max(user_id) of its external user id, which
-- belongs to one app user (a hash of the organization and the user id, or that user's mapping).
CREATE OR REPLACE FUNCTION budget_spend(p_org text, p_since timestamptz, p_until timestamptz, p_user text)
RETURNS TABLE (user_id text, spent numeric) LANGUAGE plpgsql STABLE AS $$
DECLARE
  -- Bounds as values, not a joined row: each part's index condition uses them.
  first_day date := (p_since AT TIME ZONE 'UTC')::date;
  today date := (now() AT TIME ZONE 'UTC')::date;
  last_day date := CASE WHEN p_until = 'infinity' THEN date 'infinity' ELSE (p_until AT TIME ZONE 'UTC')::date END;  -- exclusive
  today_start timestamptz := (now() AT TIME ZONE 'UTC')::date::timestamp AT TIME ZONE 'UTC';
  this_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
  first_month date := CASE WHEN date_trunc('month', p_since AT TIME ZONE 'UTC') = p_since AT TIME ZONE 'UTC'
                           THEN (p_since AT TIME ZONE 'UTC')::date
                           ELSE (date_trunc('month', p_since AT TIME ZONE 'UTC') + interval '1 month')::date END;
  -- The months whose days are read one by one (the current one, and the partial one a period
  -- that does not start on the 1st begins in): usage_daily_rollups_org_month answers them alone.
  day_months date[] := ARRAY[this_month, date_trunc('month', p_since AT TIME ZONE 'UTC')::date];
BEGIN
  RETURN QUERY
  SELECT p.user_id, sum(p.spent) FROM (
    SELECT m.user_id, m.billed_cost_usd AS spent FROM usage_monthly_rollups m
     WHERE m.organization_id = p_org AND m.month >= first_month AND m.month < this_month AND m.month + interval '1 month' <= last_day
    UNION ALL
    SELECT r.user_id, r.billed_cost_usd FROM usage_daily_rollups r
     WHERE r.organization_id = p_org AND date_trunc('month', r.day::timestamp)::date = ANY (day_months)
       AND r.day >= first_day AND r.day < least(today, last_day) AND NOT (r.day >= first_month AND r.day < this_month)
    UNION ALL
    SELECT r.user_id, r.billed_cost_usd FROM usage_rollup_deltas r
     WHERE r.organization_id = p_org AND r.day >= first_day AND r.day < least(today, last_day)
    UNION ALL
    SELECT e.user_id, e.billed_cost_usd FROM usage_events e
     WHERE e.organization_id = p_org AND e.created_at >= greatest(p_since, today_start) AND e.created_at < p_until
       AND e.billed_cost_usd IS NOT NULL
    UNION ALL
    SELECT e.user_id, e.estimated_cost_usd FROM usage_events e
     WHERE e.organization_id = p_org AND e.created_at >= p_since AND e.created_at < p_until
       AND e.estimated_cost_usd IS NOT NULL AND e.cost_usd IS NULL
  ) p
  WHERE p_user IS NULL OR p.user_id = p_user
  GROUP BY p.user_id;
END
$$;

-- What a group's members (rows whose groups contain it) or an API key (rows it authenticated)
-- spent from p_since until p_until: billed cost, or the estimate of a row that has none, as
-- budget_spend counts it. The rollups keep neither groups nor keys, so this reads the period's
-- rows by (organization_id, created_at): a recount of a group or key budget costs a scan of the
-- organization's rows of that period (docs/spend-control.md).
CREATE OR REPLACE FUNCTION budget_subject_spend(p_org text, p_since timestamptz, p_until timestamptz, p_scope text, p_subject text)
RETURNS numeric LANGUAGE sql STABLE AS $$
  SELECT coalesce(sum(coalesce(e.billed_cost_usd, CASE WHEN e.cost_usd IS NULL THEN e.estimated_cost_usd END)), 0)
    FROM usage_events e
   WHERE e.organization_id = p_org AND e.created_at >= p_since AND e.created_at < p_until
     AND CASE p_scope WHEN 'group' THEN e.groups @> ARRAY[p_subject] WHEN 'key' THEN e.api_key_id = p_subject ELSE false END
$$;

-- Spend of the current period, recomputed, for every counter a budget just written governs
-- (by psql or the admin API): a budget set mid-period starts from what was already spent.
-- Exact against concurrent settlement without locking every counter: the organization's key is
-- taken exclusively, so settlements of its rows in flight commit first (and are read) and new ones
-- wait until this commits (and then see the new budget); admissions do not take that key. Only the
-- counters recounted are locked, by one upsert in key order.
CREATE OR REPLACE FUNCTION budget_recount() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM new_budgets WHERE limit_usd IS NOT NULL) THEN RETURN NULL; END IF;
  PERFORM pg_advisory_xact_lock(727361002, budget_org_lock_key(o))
     FROM (SELECT DISTINCT organization_id AS o FROM new_budgets WHERE limit_usd IS NOT NULL ORDER BY 1) x;
  WITH b AS (
    SELECT organization_id, scope, user_id, period, budget_period_start(period, now()) AS s,
           budget_period_end(period, budget_period_start(period, now())) AS e
      FROM new_budgets WHERE limit_usd IS NOT NULL
  ), wanted AS (
    SELECT b.organization_id, 'organization'::text AS scope, ''::text AS user_id, b.period, b.s AS period_start,
           (SELECT coalesce(sum(x.spent), 0) FROM budget_spend(b.organization_id, b.s, b.e, NULL) x) AS spent
      FROM b WHERE b.scope = 'organization'
    UNION ALL
    SELECT b.organization_id, 'user', b.user_id, b.period, b.s,
           (SELECT coalesce(sum(x.spent), 0) FROM budget_spend(b.organization_id, b.s, b.e, b.user_id) x)
      FROM b WHERE b.scope = 'user'
    UNION ALL
    -- The default budget: every user who spent this period, and every user counter of it (to zero).
    SELECT b.organization_id, 'user', u.user_id, b.period, b.s, u.spent
      FROM b CROSS JOIN LATERAL (
        SELECT coalesce(x.user_id, c.user_id) AS user_id, coalesce(x.spent, 0) AS spent
          FROM (SELECT * FROM budget_spend(b.organization_id, b.s, b.e, NULL) WHERE user_id IS NOT NULL) x
          FULL JOIN (SELECT c.user_id FROM budget_counters c WHERE c.organization_id = b.organization_id AND c.scope = 'user'
                        AND c.period = b.period AND c.period_start = b.s) c ON c.user_id = x.user_id) u
     WHERE b.scope = 'default-user'
    UNION ALL
    SELECT b.organization_id, b.scope, b.user_id, b.period, b.s, budget_subject_spend(b.organization_id, b.s, b.e, b.scope, b.user_id)
      FROM b WHERE b.scope IN ('group', 'key')
  )
  INSERT INTO budget_counters AS c (organization_id, scope, user_id, period, period_start, spent_usd)
  SELECT organization_id, scope, user_id, period, period_start, max(spent) FROM wanted
   GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
  ON CONFLICT (organization_id, scope, user_id, period, period_start) DO UPDATE SET spent_usd = excluded.spent_usd;
  RETURN NULL;
END
$$;
SELECT ensure_triggers('budgets', 'budget_recount', ARRAY['budgets_recount_insert', 'budgets_recount_update'], ARRAY[
  'CREATE TRIGGER budgets_recount_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_budgets FOR EACH STATEMENT EXECUTE FUNCTION budget_recount()',
  'CREATE TRIGGER budgets_recount_update AFTER UPDATE ON %s REFERENCING NEW TABLE AS new_budgets FOR EACH STATEMENT EXECUTE FUNCTION budget_recount()']);

-- The per-user rate check, one round trip: the user's window row is locked, so replicas admitting
-- the same user take turns; other users are untouched. Windows are whole minutes of the database's
-- clock, shared by every replica. A lease is one request in flight; a sidecar extends its own
-- leases while their requests run, so a crashed sidecar's leases lapse within their TTL.
-- A sidecar counts its own requests in flight exactly (p_local) and the other replicas' by their
-- leases: its own lease of a request that just ended may not be deleted yet.
CREATE OR REPLACE FUNCTION rate_admit(p_org text, p_user text, p_lease uuid, p_rpm integer, p_max integer, p_ttl interval, p_instance uuid, p_local integer)
RETURNS TABLE (refused text, requests integer, in_flight integer, reset_ms integer)
LANGUAGE plpgsql AS $$
DECLARE
  w rate_windows;
  win timestamptz := date_trunc('minute', now());
  n integer := 0;
  reset integer := ceil(extract(epoch FROM (win + interval '1 minute' - now())) * 1000);
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);  -- as in budget_reserve: no fsync per request
  INSERT INTO rate_windows (organization_id, user_id, window_start, requests) VALUES (p_org, p_user, win, 0) ON CONFLICT DO NOTHING;
  SELECT * INTO w FROM rate_windows r WHERE r.organization_id = p_org AND r.user_id = p_user FOR UPDATE;
  IF w.window_start <> win THEN w.requests := 0; END IF;
  IF p_max IS NOT NULL THEN
    SELECT count(*) + p_local INTO n FROM rate_leases l WHERE l.organization_id = p_org AND l.user_id = p_user AND l.expires_at > now()
       AND l.instance_id <> p_instance;
  END IF;
  IF p_rpm IS NOT NULL AND w.requests >= p_rpm THEN RETURN QUERY SELECT 'rpm'::text, w.requests, n, reset; RETURN; END IF;
  IF p_max IS NOT NULL AND n >= p_max THEN RETURN QUERY SELECT 'concurrent'::text, w.requests, n, reset; RETURN; END IF;
  UPDATE rate_windows r SET window_start = win, requests = w.requests + 1 WHERE r.organization_id = p_org AND r.user_id = p_user;
  IF p_max IS NOT NULL THEN
    INSERT INTO rate_leases (lease_id, instance_id, organization_id, user_id, expires_at) VALUES (p_lease, p_instance, p_org, p_user, now() + p_ttl);
  END IF;
  RETURN QUERY SELECT NULL::text, w.requests + 1, n + 1, reset;
END
$$;
