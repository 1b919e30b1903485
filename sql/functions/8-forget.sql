-- Forgetting a user (sql/020_forget.sql, README "Privacy"): one function does it in one
-- transaction, and a record of the user still waiting in a journal or a ledger queue lands under
-- the pseudonym when it is inserted.

-- What OpenRouter-facing external ids look like (src/identity/external-id.ts), in SQL: the
-- forgotten user's rows are filed under the pseudonym's external id, so the usage API's
-- ?user=<pseudonym> finds them like any user's.
CREATE OR REPLACE FUNCTION forget_external_id(p_org text, p_user text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT p_org || '_user_' || left(encode(sha256(convert_to(p_org, 'UTF8') || '\x00'::bytea || convert_to(p_user, 'UTF8')), 'hex'), 16)
$$;

-- The pseudonym of a user id, or NULL while the organization has forgotten nobody (no key yet).
CREATE OR REPLACE FUNCTION forget_pseudonym(p_org text, p_user text) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT 'forgotten:' || left(encode(sha256(s.secret || convert_to(p_org, 'UTF8') || '\x00'::bytea || convert_to(p_user, 'UTF8')), 'hex'), 16)
    FROM forget_secrets s WHERE s.organization_id = p_org
$$;

-- A usage row or mapping made before its user was forgotten (a journal line replayed, a ledger
-- batch still queued): written under the pseudonym, without chat and message ids or name. The
-- triggers exist only once someone was forgotten, and their WHEN clause holds the time of the
-- latest forget: a row made after it (live traffic) never calls this function; an older one is
-- hashed and looked up.
CREATE OR REPLACE FUNCTION forget_pending_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  p text;
  at timestamptz;
BEGIN
  IF TG_TABLE_NAME = 'user_mappings' THEN at := NEW.last_seen_at; ELSE at := NEW.created_at; END IF;
  -- No shortcut on the "forgotten:" prefix: a client may send such an id as its own.
  IF NEW.user_id IS NULL THEN
    RETURN NEW;
  END IF;
  p := forget_pseudonym(NEW.organization_id, NEW.user_id);
  IF NOT EXISTS (SELECT 1 FROM forgotten_users f WHERE f.organization_id = NEW.organization_id AND f.pseudonym = p AND f.forgotten_at >= at) THEN
    RETURN NEW;
  END IF;
  NEW.user_id := p;
  NEW.external_user_id := forget_external_id(NEW.organization_id, p);
  IF TG_TABLE_NAME = 'user_mappings' THEN
    NEW.user_name := NULL; NEW.user_email := NULL; NEW.user_role := NULL; NEW.groups := '{}';
  ELSE
    NEW.chat_id := NULL; NEW.message_id := NULL;
  END IF;
  RETURN NEW;
END
$$;

-- (Re)creates both triggers with the latest forget's time in their WHEN clause. CREATE OR REPLACE
-- TRIGGER takes the lock forget_user already holds; readers are not blocked.
CREATE OR REPLACE FUNCTION forget_ensure_triggers() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  latest text := (SELECT max(forgotten_at) FROM forgotten_users)::text;
BEGIN
  IF latest IS NULL THEN RETURN; END IF;
  EXECUTE format('CREATE OR REPLACE TRIGGER usage_events_forget_pending BEFORE INSERT ON usage_events FOR EACH ROW '
    'WHEN (NEW.created_at <= %L::timestamptz) EXECUTE FUNCTION forget_pending_row()', latest);
  EXECUTE format('CREATE OR REPLACE TRIGGER user_mappings_forget_pending BEFORE INSERT ON user_mappings FOR EACH ROW '
    'WHEN (NEW.last_seen_at <= %L::timestamptz) EXECUTE FUNCTION forget_pending_row()', latest);
END
$$;

-- At boot only when missing (a database restored without them): forget keeps them current.
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM forgotten_users)
     AND (NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'usage_events'::regclass AND tgname = 'usage_events_forget_pending')
          OR NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'user_mappings'::regclass AND tgname = 'user_mappings_forget_pending')) THEN
    PERFORM forget_ensure_triggers();
  END IF;
END $$;

-- Forgets one user of one organization, in the caller's transaction: their rows, rollups,
-- mapping, budgets, holds, rate windows and audit lines move to the pseudonym; name, email, role,
-- groups of the mapping, chat and message ids are erased. Sums move whole, merged into the
-- pseudonym's where it already has rows (a second forget), so every total stays exact.
-- Returns the pseudonym, or NULL when nothing names the user (nothing was changed).
--
-- Locks, in the order inserts and compaction take them: usage_events and the rollup tables
-- EXCLUSIVE (reads go on; the ledger's inserts and the compaction wait for the commit, then the
-- insert trigger sees forgotten_users; the ledger's statement takes usage_events before
-- user_mappings, as here), user_mappings and budgets (a budget written through the API holds
-- budgets and then wants the budget key: taking the tables first means forget never holds the key
-- while waiting for them), then the organization's budget key exclusively, as a budget recount
-- does (settlements in flight commit first). The key alone would order forget after insert
-- statements that finished; the table lock also waits for one still inserting its rows.
CREATE OR REPLACE FUNCTION forget_user(p_org text, p_user text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  p text;
  p_ext text;
  exts text[];
BEGIN
  LOCK TABLE usage_events, usage_rollup_deltas, usage_daily_rollups, usage_monthly_rollups,
             usage_group_rollup_deltas, usage_group_daily_rollups, usage_group_monthly_rollups IN EXCLUSIVE MODE;
  LOCK TABLE user_mappings, budgets IN SHARE ROW EXCLUSIVE MODE;
  PERFORM pg_advisory_xact_lock(727361002, budget_org_lock_key(p_org));

  SELECT coalesce(array_agg(DISTINCT x), '{}') INTO exts FROM (
    SELECT forget_external_id(p_org, p_user) AS x
    UNION SELECT external_user_id FROM user_mappings WHERE organization_id = p_org AND user_id = p_user
    UNION SELECT external_user_id FROM usage_events WHERE organization_id = p_org AND user_id = p_user) e;
  IF NOT EXISTS (SELECT 1 FROM usage_events WHERE organization_id = p_org AND external_user_id = ANY (exts))
     AND NOT EXISTS (SELECT 1 FROM user_mappings WHERE organization_id = p_org AND user_id = p_user)
     AND NOT EXISTS (SELECT 1 FROM budgets WHERE organization_id = p_org AND scope = 'user' AND user_id = p_user)
     AND NOT EXISTS (SELECT 1 FROM budget_counters WHERE organization_id = p_org AND scope = 'user' AND user_id = p_user) THEN
    RETURN NULL;
  END IF;

  INSERT INTO forget_secrets (organization_id, secret)
    VALUES (p_org, sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || clock_timestamp()::text, 'UTF8')))
    ON CONFLICT DO NOTHING;
  p := forget_pseudonym(p_org, p_user);
  p_ext := forget_external_id(p_org, p);
  INSERT INTO forgotten_users AS f (organization_id, pseudonym, forgotten_at) VALUES (p_org, p, clock_timestamp())
    ON CONFLICT (organization_id, pseudonym) DO UPDATE SET forgotten_at = greatest(f.forgotten_at, excluded.forgotten_at);
  PERFORM forget_ensure_triggers();

  -- The raw rows, every partition.
  UPDATE usage_events SET user_id = CASE WHEN user_id IS NULL THEN NULL ELSE p END, external_user_id = p_ext,
         chat_id = NULL, message_id = NULL
   WHERE organization_id = p_org AND external_user_id = ANY (exts);

  -- The rollups: moved whole, merged where the pseudonym has a row for the same key.
  UPDATE usage_rollup_deltas SET external_user_id = p_ext, user_id = CASE WHEN user_id IS NULL THEN NULL ELSE p END
   WHERE organization_id = p_org AND external_user_id = ANY (exts);
  WITH moved AS (DELETE FROM usage_daily_rollups WHERE organization_id = p_org AND external_user_id = ANY (exts) RETURNING *)
  INSERT INTO usage_daily_rollups AS u
  SELECT organization_id, day, p_ext, model, kind,
         sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
         sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd),
         CASE WHEN max(user_id) IS NULL THEN NULL ELSE p END
    FROM moved GROUP BY 1, 2, 4, 5 ORDER BY 1, 2, 4, 5
  ON CONFLICT (organization_id, day, external_user_id, model, kind) DO UPDATE SET
    requests = u.requests + excluded.requests,
    failed_or_aborted = u.failed_or_aborted + excluded.failed_or_aborted,
    prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = u.completion_tokens + excluded.completion_tokens,
    total_tokens = u.total_tokens + excluded.total_tokens,
    cached_tokens = u.cached_tokens + excluded.cached_tokens,
    reasoning_tokens = u.reasoning_tokens + excluded.reasoning_tokens,
    cost_usd = u.cost_usd + excluded.cost_usd,
    upstream_cost_usd = u.upstream_cost_usd + excluded.upstream_cost_usd,
    billed_cost_usd = u.billed_cost_usd + excluded.billed_cost_usd,
    user_id = greatest(u.user_id, excluded.user_id);
  WITH moved AS (DELETE FROM usage_monthly_rollups WHERE organization_id = p_org AND external_user_id = ANY (exts) RETURNING *)
  INSERT INTO usage_monthly_rollups AS u
  SELECT organization_id, month, p_ext, model, kind,
         sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
         sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd),
         CASE WHEN max(user_id) IS NULL THEN NULL ELSE p END
    FROM moved GROUP BY 1, 2, 4, 5 ORDER BY 1, 2, 4, 5
  ON CONFLICT (organization_id, month, external_user_id, model, kind) DO UPDATE SET
    requests = u.requests + excluded.requests,
    failed_or_aborted = u.failed_or_aborted + excluded.failed_or_aborted,
    prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = u.completion_tokens + excluded.completion_tokens,
    total_tokens = u.total_tokens + excluded.total_tokens,
    cached_tokens = u.cached_tokens + excluded.cached_tokens,
    reasoning_tokens = u.reasoning_tokens + excluded.reasoning_tokens,
    cost_usd = u.cost_usd + excluded.cost_usd,
    upstream_cost_usd = u.upstream_cost_usd + excluded.upstream_cost_usd,
    billed_cost_usd = u.billed_cost_usd + excluded.billed_cost_usd,
    user_id = greatest(u.user_id, excluded.user_id);

  -- The group rollups (sql/023) carry the user too: moved and merged the same way, per group.
  UPDATE usage_group_rollup_deltas SET external_user_id = p_ext, user_id = CASE WHEN user_id IS NULL THEN NULL ELSE p END
   WHERE organization_id = p_org AND external_user_id = ANY (exts);
  WITH moved AS (DELETE FROM usage_group_daily_rollups WHERE organization_id = p_org AND external_user_id = ANY (exts) RETURNING *)
  INSERT INTO usage_group_daily_rollups AS u
  SELECT organization_id, day, group_id, p_ext, model, kind,
         sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
         sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd),
         CASE WHEN max(user_id) IS NULL THEN NULL ELSE p END
    FROM moved GROUP BY 1, 2, 3, 5, 6 ORDER BY 1, 2, 3, 5, 6
  ON CONFLICT (organization_id, day, group_id, external_user_id, model, kind) DO UPDATE SET
    requests = u.requests + excluded.requests,
    failed_or_aborted = u.failed_or_aborted + excluded.failed_or_aborted,
    prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = u.completion_tokens + excluded.completion_tokens,
    total_tokens = u.total_tokens + excluded.total_tokens,
    cached_tokens = u.cached_tokens + excluded.cached_tokens,
    reasoning_tokens = u.reasoning_tokens + excluded.reasoning_tokens,
    cost_usd = u.cost_usd + excluded.cost_usd,
    upstream_cost_usd = u.upstream_cost_usd + excluded.upstream_cost_usd,
    billed_cost_usd = u.billed_cost_usd + excluded.billed_cost_usd,
    user_id = greatest(u.user_id, excluded.user_id);
  WITH moved AS (DELETE FROM usage_group_monthly_rollups WHERE organization_id = p_org AND external_user_id = ANY (exts) RETURNING *)
  INSERT INTO usage_group_monthly_rollups AS u
  SELECT organization_id, month, group_id, p_ext, model, kind,
         sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
         sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd),
         CASE WHEN max(user_id) IS NULL THEN NULL ELSE p END
    FROM moved GROUP BY 1, 2, 3, 5, 6 ORDER BY 1, 2, 3, 5, 6
  ON CONFLICT (organization_id, month, group_id, external_user_id, model, kind) DO UPDATE SET
    requests = u.requests + excluded.requests,
    failed_or_aborted = u.failed_or_aborted + excluded.failed_or_aborted,
    prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = u.completion_tokens + excluded.completion_tokens,
    total_tokens = u.total_tokens + excluded.total_tokens,
    cached_tokens = u.cached_tokens + excluded.cached_tokens,
    reasoning_tokens = u.reasoning_tokens + excluded.reasoning_tokens,
    cost_usd = u.cost_usd + excluded.cost_usd,
    upstream_cost_usd = u.upstream_cost_usd + excluded.upstream_cost_usd,
    billed_cost_usd = u.billed_cost_usd + excluded.billed_cost_usd,
    user_id = greatest(u.user_id, excluded.user_id);

  -- Keys made for the user bill the pseudonym from now on (every replica at its next key read),
  -- and a Stripe customer mapped to the user stays mapped to the same (renamed) spend.
  UPDATE api_keys SET user_id = p WHERE organization_id = p_org AND user_id = p_user;
  WITH gone AS (DELETE FROM billing_customers WHERE organization_id = p_org AND scope = 'user' AND subject = p_user RETURNING *)
  INSERT INTO billing_customers AS c (organization_id, scope, subject, stripe_customer_id, updated_at)
  SELECT organization_id, scope, p, stripe_customer_id, updated_at FROM gone
  ON CONFLICT (organization_id, scope, subject) DO UPDATE SET stripe_customer_id = excluded.stripe_customer_id, updated_at = excluded.updated_at;

  -- The mapping: kept as the pseudonym's, with nothing that names a person.
  WITH gone AS (DELETE FROM user_mappings WHERE organization_id = p_org AND user_id = p_user RETURNING *)
  INSERT INTO user_mappings AS m (organization_id, user_id, external_user_id, user_name, user_email, user_role, first_seen_at, last_seen_at, groups)
  SELECT organization_id, p, p_ext, NULL, NULL, NULL, first_seen_at, last_seen_at, '{}' FROM gone
  ON CONFLICT (organization_id, user_id) DO UPDATE SET
    first_seen_at = least(m.first_seen_at, excluded.first_seen_at),
    last_seen_at = greatest(m.last_seen_at, excluded.last_seen_at);

  -- Budget counters and holds: spend and holds move with the user, summed into the pseudonym's.
  WITH gone AS (DELETE FROM budget_counters WHERE organization_id = p_org AND scope = 'user' AND user_id = p_user RETURNING *)
  INSERT INTO budget_counters AS c (organization_id, scope, user_id, period, period_start, spent_usd, reserved_usd, warned, overrun_usd)
  SELECT organization_id, scope, p, period, period_start, spent_usd, reserved_usd, warned, overrun_usd FROM gone
   ORDER BY period, period_start
  ON CONFLICT (organization_id, scope, user_id, period, period_start) DO UPDATE SET
    spent_usd = c.spent_usd + excluded.spent_usd,
    reserved_usd = c.reserved_usd + excluded.reserved_usd,
    overrun_usd = c.overrun_usd + excluded.overrun_usd,
    warned = c.warned OR excluded.warned;
  UPDATE budget_reservations SET user_id = p WHERE organization_id = p_org AND user_id = p_user;
  -- The user's own budget (or its tombstone) becomes the pseudonym's; its recount runs on the
  -- rows just moved, so the counters it rewrites hold the same spend.
  WITH gone AS (DELETE FROM budgets WHERE organization_id = p_org AND scope = 'user' AND user_id = p_user RETURNING *)
  INSERT INTO budgets AS b (organization_id, scope, user_id, limit_usd, period, source, updated_at)
  SELECT organization_id, scope, p, limit_usd, period, source, updated_at FROM gone
  ON CONFLICT (organization_id, scope, user_id) DO UPDATE SET
    limit_usd = excluded.limit_usd, period = excluded.period, source = excluded.source, updated_at = excluded.updated_at;

  -- Rate limits: the window is the next minute's business; leases in flight keep counting, renamed.
  DELETE FROM rate_windows WHERE organization_id = p_org AND user_id = p_user;
  UPDATE rate_leases SET user_id = p WHERE organization_id = p_org AND user_id = p_user;

  -- The audit trail: the one rewrite its trigger lets through. A target naming the user
  -- (budgets/users/<id>, billing/customers/users/<id>) and a JSON "user_id" equal to the id now
  -- name the pseudonym. Only those: a group, key or model may carry the same text as a user id
  -- (user "staff", group "staff"), and its lines must keep naming it.
  PERFORM set_config('usage_proxy.audit_rewrite', 'forget', true);
  UPDATE audit_log SET
    target = CASE WHEN right(target, length(p_user) + 7) = '/users/' || p_user THEN left(target, length(target) - length(p_user)) || p ELSE target END,
    before = replace(before::text, '"user_id": ' || to_jsonb(p_user)::text, '"user_id": ' || to_jsonb(p)::text)::jsonb,
    after = replace(after::text, '"user_id": ' || to_jsonb(p_user)::text, '"user_id": ' || to_jsonb(p)::text)::jsonb
   WHERE organization_id = p_org
     AND (right(target, length(p_user) + 7) = '/users/' || p_user
          OR strpos(before::text, '"user_id": ' || to_jsonb(p_user)::text) > 0 OR strpos(after::text, '"user_id": ' || to_jsonb(p_user)::text) > 0);
  PERFORM set_config('usage_proxy.audit_rewrite', '', true);
  RETURN p;
END
$$;
