-- Spend controls: budgets in billed USD, counters that hold reservations, and rate-limit
-- state. Postgres is the only state shared between replicas. README "Budgets and limits" explains
-- how to read and write these tables with psql.

-- One row per budget. scope 'user' names the app's user id; 'default-user' applies to every user
-- without a row of their own. limit_usd NULL is a budget removed through the admin API: the
-- environment (ORG_BUDGET_USD, USER_BUDGET_USD) does not bring it back.
CREATE TABLE budgets (
  organization_id text NOT NULL REFERENCES organizations(id),
  scope           text NOT NULL CHECK (scope IN ('organization', 'default-user', 'user')),
  user_id         text NOT NULL DEFAULT '',
  limit_usd       numeric CHECK (limit_usd >= 0),
  period          text NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
  source          text NOT NULL DEFAULT 'api' CHECK (source IN ('env', 'api')),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, scope, user_id),
  CHECK ((scope = 'user') = (user_id <> ''))
);

-- Spend and reservations per period. scope 'organization' (user_id '') or 'user' (the user's
-- own budget or the default one count the same spend). spent_usd is the sum of billed_cost_usd of
-- the period's usage_events, kept by the trigger below in the transaction that inserts them.
CREATE TABLE budget_counters (
  organization_id text NOT NULL,
  scope           text NOT NULL CHECK (scope IN ('organization', 'user')),
  user_id         text NOT NULL DEFAULT '',
  period          text NOT NULL,
  period_start    timestamptz NOT NULL,
  spent_usd       numeric NOT NULL DEFAULT 0,
  reserved_usd    numeric NOT NULL DEFAULT 0,
  warned          boolean NOT NULL DEFAULT false,  -- BUDGET_WARN_PERCENT crossed and announced this period
  PRIMARY KEY (organization_id, scope, user_id, period, period_start)
);

-- A request's estimate, held until its usage row is inserted (settled by the trigger, exactly once:
-- the row is deleted) or until it expires (released by a sidecar's sweeper: a crash, a lost journal).
CREATE TABLE budget_reservations (
  event_id          uuid PRIMARY KEY,              -- usage_events.event_id of the request
  organization_id   text NOT NULL,
  user_id           text NOT NULL DEFAULT '',
  org_period        text,                          -- NULL: no organization budget was held
  org_period_start  timestamptz,
  user_period       text,                          -- NULL: no user budget was held
  user_period_start timestamptz,
  amount_usd        numeric NOT NULL,
  expires_at        timestamptz NOT NULL
);
CREATE INDEX budget_reservations_expires ON budget_reservations (expires_at);

-- USER_RPM: requests per user per minute window; USER_MAX_CONCURRENT: one lease per request in flight.
CREATE TABLE rate_windows (
  organization_id text NOT NULL,
  user_id         text NOT NULL,
  window_start    timestamptz NOT NULL,
  requests        integer NOT NULL DEFAULT 0,
  PRIMARY KEY (organization_id, user_id)
);
CREATE TABLE rate_leases (
  lease_id        uuid PRIMARY KEY,
  instance_id     uuid NOT NULL,                 -- the sidecar process holding it
  organization_id text NOT NULL,
  user_id         text NOT NULL,
  expires_at      timestamptz NOT NULL
);
CREATE INDEX rate_leases_user ON rate_leases (organization_id, user_id);

-- Weeks start on Monday (ISO), everything in UTC; 'total' never resets.
CREATE FUNCTION budget_period_start(p_period text, p_at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE p_period
    WHEN 'total' THEN timestamptz '1970-01-01 00:00:00+00'
    ELSE date_trunc(p_period, p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
  END
$$;

-- Spend of the current period, recomputed from usage_events, for every counter a budget governs.
-- Called whenever a budget is written (by psql or the admin API): a budget set mid-period starts
-- from what was already spent. The exclusive lock orders it against the settlement trigger, so a
-- batch committing meanwhile is counted exactly once.
CREATE FUNCTION budget_recount() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  b record;
  s timestamptz;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM new_budgets WHERE limit_usd IS NOT NULL) THEN RETURN NULL; END IF;
  LOCK TABLE budget_counters IN EXCLUSIVE MODE;
  FOR b IN SELECT * FROM new_budgets WHERE limit_usd IS NOT NULL LOOP
    s := budget_period_start(b.period, now());
    IF b.scope = 'organization' THEN
      INSERT INTO budget_counters AS c (organization_id, scope, user_id, period, period_start, spent_usd)
      SELECT b.organization_id, 'organization', '', b.period, s, coalesce(sum(e.billed_cost_usd), 0)
        FROM usage_events e WHERE e.organization_id = b.organization_id AND e.created_at >= s
      ON CONFLICT (organization_id, scope, user_id, period, period_start) DO UPDATE SET spent_usd = excluded.spent_usd;
    ELSIF b.scope = 'user' THEN
      INSERT INTO budget_counters AS c (organization_id, scope, user_id, period, period_start, spent_usd)
      SELECT b.organization_id, 'user', b.user_id, b.period, s, coalesce(sum(e.billed_cost_usd), 0)
        FROM usage_events e WHERE e.organization_id = b.organization_id AND e.user_id = b.user_id AND e.created_at >= s
      ON CONFLICT (organization_id, scope, user_id, period, period_start) DO UPDATE SET spent_usd = excluded.spent_usd;
    ELSE
      UPDATE budget_counters SET spent_usd = 0
       WHERE organization_id = b.organization_id AND scope = 'user' AND period = b.period AND period_start = s;
      INSERT INTO budget_counters AS c (organization_id, scope, user_id, period, period_start, spent_usd)
      SELECT b.organization_id, 'user', e.user_id, b.period, s, coalesce(sum(e.billed_cost_usd), 0)
        FROM usage_events e WHERE e.organization_id = b.organization_id AND e.user_id IS NOT NULL AND e.created_at >= s
       GROUP BY e.user_id ORDER BY e.user_id
      ON CONFLICT (organization_id, scope, user_id, period, period_start) DO UPDATE SET spent_usd = excluded.spent_usd;
    END IF;
  END LOOP;
  PERFORM pg_notify('usage_proxy_budgets', '');
  RETURN NULL;
END
$$;
CREATE TRIGGER budgets_recount_insert AFTER INSERT ON budgets
  REFERENCING NEW TABLE AS new_budgets FOR EACH STATEMENT EXECUTE FUNCTION budget_recount();
CREATE TRIGGER budgets_recount_update AFTER UPDATE ON budgets
  REFERENCING NEW TABLE AS new_budgets FOR EACH STATEMENT EXECUTE FUNCTION budget_recount();

-- Settlement, in the transaction that inserts usage rows: each new row's billed cost is added to
-- the counters of its period, and its reservation (if any) is deleted and released. Rows that ON
-- CONFLICT DO NOTHING skipped are not in new_rows, so a replayed record never counts twice.
-- Counters are touched in one sorted statement (organization before user), the same order the
-- reservation takes its locks in: no deadlocks.
CREATE FUNCTION budget_settle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  LOCK TABLE budget_counters IN ROW EXCLUSIVE MODE;
  IF NOT EXISTS (SELECT 1 FROM budgets WHERE limit_usd IS NOT NULL) AND NOT EXISTS (SELECT 1 FROM budget_reservations) THEN
    RETURN NULL;
  END IF;
  WITH released AS (
    DELETE FROM budget_reservations r USING new_rows n WHERE r.event_id = n.event_id
    RETURNING r.*
  ), periods AS (
    SELECT DISTINCT organization_id, CASE scope WHEN 'organization' THEN 'organization' ELSE 'user' END AS scope, period
      FROM budgets WHERE limit_usd IS NOT NULL
  ), deltas AS (
    SELECT organization_id, 'organization' AS scope, '' AS user_id, org_period AS period, org_period_start AS period_start,
           0::numeric AS spent, -amount_usd AS reserved
      FROM released WHERE org_period IS NOT NULL
    UNION ALL
    SELECT organization_id, 'user', user_id, user_period, user_period_start, 0, -amount_usd
      FROM released WHERE user_period IS NOT NULL
    UNION ALL
    SELECT n.organization_id, 'organization', '', p.period, budget_period_start(p.period, n.created_at), n.billed_cost_usd, 0
      FROM new_rows n JOIN periods p ON p.organization_id = n.organization_id AND p.scope = 'organization' WHERE n.billed_cost_usd <> 0
    UNION ALL
    SELECT n.organization_id, 'user', n.user_id, p.period, budget_period_start(p.period, n.created_at), n.billed_cost_usd, 0
      FROM new_rows n JOIN periods p ON p.organization_id = n.organization_id AND p.scope = 'user'
     WHERE n.billed_cost_usd <> 0 AND n.user_id IS NOT NULL
  )
  INSERT INTO budget_counters AS c (organization_id, scope, user_id, period, period_start, spent_usd, reserved_usd)
  SELECT organization_id, scope, user_id, period, period_start, sum(spent), sum(reserved)
    FROM deltas GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5
  ON CONFLICT (organization_id, scope, user_id, period, period_start) DO UPDATE
    SET spent_usd = c.spent_usd + excluded.spent_usd,
        reserved_usd = greatest(c.reserved_usd + excluded.reserved_usd, 0);
  RETURN NULL;
END
$$;
-- The partitioned usage_events (migration 007) must carry this trigger on its parent table:
-- statement-level triggers with transition tables are allowed on a partitioned table's parent.
CREATE TRIGGER usage_events_settle_budgets AFTER INSERT ON usage_events
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION budget_settle();

-- Expired reservations (their request's record never arrived) released, oldest first, by whichever
-- sidecar gets there: SKIP LOCKED keeps sweepers of several replicas out of each other's way.
CREATE FUNCTION budget_sweep(p_limit integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE n integer;
BEGIN
  WITH released AS (
    DELETE FROM budget_reservations WHERE event_id IN (
      SELECT event_id FROM budget_reservations WHERE expires_at < now() ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED)
    RETURNING *
  ), deltas AS (
    SELECT organization_id, 'organization' AS scope, '' AS user_id, org_period AS period, org_period_start AS period_start, amount_usd
      FROM released WHERE org_period IS NOT NULL
    UNION ALL
    SELECT organization_id, 'user', user_id, user_period, user_period_start, amount_usd FROM released WHERE user_period IS NOT NULL
  ), sums AS (
    SELECT organization_id, scope, user_id, period, period_start, sum(amount_usd) AS amount FROM deltas GROUP BY 1, 2, 3, 4, 5
  ), upd AS (
    UPDATE budget_counters c SET reserved_usd = greatest(c.reserved_usd - s.amount, 0)
      FROM (SELECT * FROM sums ORDER BY 1, 2, 3, 4, 5) s
     WHERE c.organization_id = s.organization_id AND c.scope = s.scope AND c.user_id = s.user_id
       AND c.period = s.period AND c.period_start = s.period_start
    RETURNING 1
  )
  SELECT count(*) INTO n FROM released;
  DELETE FROM rate_leases WHERE expires_at < now();
  RETURN n;
END
$$;

-- The admission: one call, one round trip. Locks the organization's counter, then the user's
-- (always in that order), refuses when the estimate does not fit either budget, else holds it on
-- both and records the reservation. p_now is the caller's clock (tests move it across periods).
CREATE FUNCTION budget_reserve(p_org text, p_user text, p_event uuid, p_amount numeric, p_now timestamptz, p_ttl interval)
RETURNS TABLE (refused_scope text, limit_usd numeric, period text, period_start timestamptz, spent_usd numeric, reserved_usd numeric,
               org_limit numeric, org_spent numeric, org_period text, org_period_start timestamptz,
               user_scope text, user_limit numeric, user_spent numeric, user_period text, user_period_start timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
  ob budgets; ub budgets;
  os timestamptz; us timestamptz;
  oc budget_counters; uc budget_counters;
BEGIN
  -- The organization's counter is one hot row: waiting for a WAL flush while holding it would
  -- serialize every request on fsync. A reservation lost to a database crash only lets the
  -- requests then in flight run unheld; their spend still lands with their records.
  PERFORM set_config('synchronous_commit', 'off', true);
  SELECT * INTO ob FROM budgets b WHERE b.organization_id = p_org AND b.scope = 'organization' AND b.limit_usd IS NOT NULL;
  IF p_user IS NOT NULL THEN
    SELECT * INTO ub FROM budgets b WHERE b.organization_id = p_org AND b.limit_usd IS NOT NULL
       AND ((b.scope = 'user' AND b.user_id = p_user) OR b.scope = 'default-user')
     ORDER BY b.scope DESC LIMIT 1;  -- 'user' before 'default-user'
  END IF;
  IF ob.scope IS NULL AND ub.scope IS NULL THEN
    RETURN;  -- no row: no budget applies
  END IF;
  os := budget_period_start(ob.period, p_now);
  us := budget_period_start(ub.period, p_now);
  -- Everything that needs no lock first: the hot organization row is held as briefly as possible.
  INSERT INTO budget_reservations (event_id, organization_id, user_id, org_period, org_period_start, user_period, user_period_start, amount_usd, expires_at)
  VALUES (p_event, p_org, coalesce(p_user, ''), ob.period, os, ub.period, us, p_amount, now() + p_ttl);
  IF ob.scope IS NOT NULL THEN
    SELECT * INTO oc FROM budget_counters c WHERE c.organization_id = p_org AND c.scope = 'organization' AND c.user_id = ''
       AND c.period = ob.period AND c.period_start = os FOR UPDATE;
    IF NOT FOUND THEN
      INSERT INTO budget_counters (organization_id, scope, user_id, period, period_start)
        VALUES (p_org, 'organization', '', ob.period, os) ON CONFLICT DO NOTHING;
      SELECT * INTO oc FROM budget_counters c WHERE c.organization_id = p_org AND c.scope = 'organization' AND c.user_id = ''
         AND c.period = ob.period AND c.period_start = os FOR UPDATE;
    END IF;
  END IF;
  IF ub.scope IS NOT NULL THEN
    SELECT * INTO uc FROM budget_counters c WHERE c.organization_id = p_org AND c.scope = 'user' AND c.user_id = p_user
       AND c.period = ub.period AND c.period_start = us FOR UPDATE;
    IF NOT FOUND THEN
      INSERT INTO budget_counters (organization_id, scope, user_id, period, period_start)
        VALUES (p_org, 'user', p_user, ub.period, us) ON CONFLICT DO NOTHING;
      SELECT * INTO uc FROM budget_counters c WHERE c.organization_id = p_org AND c.scope = 'user' AND c.user_id = p_user
         AND c.period = ub.period AND c.period_start = us FOR UPDATE;
    END IF;
  END IF;
  IF ob.scope IS NOT NULL AND oc.spent_usd + oc.reserved_usd + p_amount > ob.limit_usd THEN
    DELETE FROM budget_reservations r WHERE r.event_id = p_event;
    RETURN QUERY SELECT 'organization'::text, ob.limit_usd, ob.period, os, oc.spent_usd, oc.reserved_usd,
      ob.limit_usd, oc.spent_usd, ob.period, os, ub.scope, ub.limit_usd, uc.spent_usd, ub.period, us;
    RETURN;
  END IF;
  IF ub.scope IS NOT NULL AND uc.spent_usd + uc.reserved_usd + p_amount > ub.limit_usd THEN
    DELETE FROM budget_reservations r WHERE r.event_id = p_event;
    RETURN QUERY SELECT ub.scope, ub.limit_usd, ub.period, us, uc.spent_usd, uc.reserved_usd,
      ob.limit_usd, oc.spent_usd, ob.period, os, ub.scope, ub.limit_usd, uc.spent_usd, ub.period, us;
    RETURN;
  END IF;
  IF ob.scope IS NOT NULL THEN
    UPDATE budget_counters c SET reserved_usd = c.reserved_usd + p_amount WHERE c.organization_id = p_org AND c.scope = 'organization'
       AND c.user_id = '' AND c.period = ob.period AND c.period_start = os;
  END IF;
  IF ub.scope IS NOT NULL THEN
    UPDATE budget_counters c SET reserved_usd = c.reserved_usd + p_amount WHERE c.organization_id = p_org AND c.scope = 'user'
       AND c.user_id = p_user AND c.period = ub.period AND c.period_start = us;
  END IF;
  RETURN QUERY SELECT NULL::text, NULL::numeric, NULL::text, NULL::timestamptz, NULL::numeric, NULL::numeric,
    ob.limit_usd, oc.spent_usd, ob.period, os, ub.scope, ub.limit_usd, uc.spent_usd, ub.period, us;
END
$$;

-- The per-user rate check, one round trip: the user's window row is locked, so replicas admitting
-- the same user take turns; other users are untouched. Windows are whole minutes of the database's
-- clock, shared by every replica. A lease is one request in flight; a sidecar extends its own
-- leases while their requests run, so a crashed sidecar's leases lapse within their TTL.
-- A sidecar counts its own requests in flight exactly (p_local) and the other replicas' by their
-- leases: its own lease of a request that just ended may not be deleted yet.
CREATE FUNCTION rate_admit(p_org text, p_user text, p_lease uuid, p_rpm integer, p_max integer, p_ttl interval, p_instance uuid, p_local integer)
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

-- Many admissions in one round trip and one commit: a replica gathers the requests that arrive
-- together. Items go in (user, arrival) order, so every batch takes the organization's lock first
-- and the users' in ascending order, the order the settlement trigger uses: no deadlocks. Each
-- item returns its row under its index `i`; an item without a row has no budget that applies.
CREATE FUNCTION budget_reserve_many(p_items jsonb, p_now timestamptz, p_ttl interval)
RETURNS TABLE (i integer, refused_scope text, limit_usd numeric, period text, period_start timestamptz, spent_usd numeric, reserved_usd numeric,
               org_limit numeric, org_spent numeric, org_period text, org_period_start timestamptz,
               user_scope text, user_limit numeric, user_spent numeric, user_period text, user_period_start timestamptz)
LANGUAGE plpgsql AS $$
DECLARE item record;
BEGIN
  PERFORM set_config('synchronous_commit', 'off', true);
  FOR item IN SELECT * FROM jsonb_to_recordset(p_items) AS x(i integer, org text, usr text, ev uuid, amount numeric)
               ORDER BY x.org, x.usr NULLS FIRST, x.i LOOP
    RETURN QUERY SELECT item.i, r.* FROM budget_reserve(item.org, item.usr, item.ev, item.amount, p_now, p_ttl) r;
  END LOOP;
END
$$;
