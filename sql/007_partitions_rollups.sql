-- usage_events becomes a table partitioned by month of created_at, with exact daily rollups kept
-- from the same transaction as every insert. README.md "Operations at scale" explains the design;
-- what the code cannot say briefly is why each piece is shaped this way:
--
-- * generation_id: a unique index on a partitioned table must include the partition key, and a
--   record replayed after midnight could otherwise land twice. A side table holds each id once;
--   the statement trigger below claims the ids and takes back the rows whose id was already
--   claimed, which is exactly what the ledger's INSERT ... ON CONFLICT DO NOTHING did with the
--   old UNIQUE index, concurrent replicas included (the second claimer waits on the first's
--   index entry). Set-based, once per statement: a per-row trigger cost ledger throughput.
-- * event_id: the primary key becomes (event_id, created_at); a record's created_at never
--   changes between its replays, so the same event always meets itself in the same partition.
-- * rollups: the same AFTER INSERT statement trigger, with a transition table, sums the rows the
--   statement inserted (less the replays taken back) and appends the sums to a delta table, in
--   the insert's transaction: exact by construction, no watermark to get wrong, and no lock
--   shared between replicas' inserts, so no deadlock. A compaction folds the deltas into the
--   rollups every few seconds (upserts in key order); readers add the deltas not folded yet.
--
-- The conversion copies whatever columns usage_events has when this runs (later migrations may
-- have added some), keeps every index, foreign key, trigger and view that depended on it.

-- Monthly partitions are named usage_events_YYYY_MM; rows outside every month go to the default.
CREATE FUNCTION usage_events_insert_columns () RETURNS text LANGUAGE sql STABLE AS $$
  SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
  FROM pg_attribute
  WHERE attrelid = 'usage_events'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
$$;

-- Creates the partition of `month` unless it exists; rows already sitting in the default
-- partition for that month are moved into it (a partition cannot be created over them).
CREATE FUNCTION usage_ensure_partition (month date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  first date := date_trunc('month', month)::date;
  name text := format('usage_events_%s', to_char(first, 'YYYY_MM'));
  lo text := quote_literal(first::text || ' 00:00:00+00');
  hi text := quote_literal((first + interval '1 month')::date::text || ' 00:00:00+00');
  stray boolean;
BEGIN
  IF to_regclass(name) IS NOT NULL THEN RETURN false; END IF;
  EXECUTE format('SELECT EXISTS (SELECT 1 FROM usage_events_default WHERE created_at >= %s AND created_at < %s)', lo, hi) INTO stray;
  IF NOT stray THEN
    EXECUTE format('CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%s) TO (%s)', name, lo, hi);
  ELSE
    -- Straight to the partition and out of the default: the parent's trigger does not fire, so neither
    -- the claimed generation ids nor the rollups count these rows twice.
    EXECUTE format('CREATE TABLE %I (LIKE usage_events INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)', name);
    EXECUTE format('INSERT INTO %I (%s) SELECT %s FROM usage_events_default WHERE created_at >= %s AND created_at < %s',
      name, usage_events_insert_columns(), usage_events_insert_columns(), lo, hi);
    EXECUTE format('DELETE FROM usage_events_default WHERE created_at >= %s AND created_at < %s', lo, hi);
    EXECUTE format('ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', name, lo, hi);
  END IF;
  RETURN true;
END $$;

-- Drops every monthly partition that ends on or before `cutoff` (the rollups stay), and the
-- generation ids claimed by the rows dropped. Returns the names dropped.
CREATE FUNCTION usage_drop_partitions_before (cutoff date) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
  part record;
  dropped text[] := '{}';
  oldest timestamptz;
BEGIN
  FOR part IN
    SELECT c.relname, to_date(substr(c.relname, 14), 'YYYY_MM') AS month
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'usage_events'::regclass AND c.relname ~ '^usage_events_\d{4}_\d{2}$'
    ORDER BY 2
  LOOP
    EXIT WHEN (part.month + interval '1 month')::date > cutoff;
    EXECUTE format('DROP TABLE %I', part.relname);
    dropped := dropped || part.relname::text;
  END LOOP;
  IF cardinality(dropped) > 0 THEN
    oldest := (cutoff::text || ' 00:00:00+00')::timestamptz;
    DELETE FROM usage_generation_ids g WHERE g.created_at < oldest
      AND NOT EXISTS (SELECT 1 FROM usage_events_default d WHERE d.generation_id = g.generation_id);
  END IF;
  RETURN dropped;
END $$;

CREATE TABLE usage_generation_ids (
  generation_id text PRIMARY KEY,
  created_at    timestamptz NOT NULL  -- lets retention forget the ids of dropped partitions
);

CREATE TABLE usage_daily_rollups (
  organization_id   text NOT NULL,
  day               date NOT NULL,                 -- UTC day of created_at
  external_user_id  text NOT NULL,
  model             text NOT NULL,                 -- coalesce(served_model, model, ''): '' when neither is known
  kind              text NOT NULL,
  requests          bigint NOT NULL,
  failed_or_aborted bigint NOT NULL,               -- outcome <> 'ok'
  prompt_tokens     bigint NOT NULL,
  completion_tokens bigint NOT NULL,
  total_tokens      bigint NOT NULL,
  cached_tokens     bigint NOT NULL,
  reasoning_tokens  bigint NOT NULL,
  cost_usd          numeric NOT NULL,
  upstream_cost_usd numeric NOT NULL,
  billed_cost_usd   numeric NOT NULL,
  user_id           text,                          -- max(user_id): the app's user id, NULL for body-`user` rows
  -- Both indexes carry what the billing views read (INCLUDE), so they answer from the index
  -- alone: one organization's rows of a month are spread over the whole month's heap pages
  -- (rows arrive in time order, all organizations mixed), and reading those pages made a month
  -- query at 10 million rows take seconds instead of tens of milliseconds.
  PRIMARY KEY (organization_id, day, external_user_id, model, kind)
    INCLUDE (requests, failed_or_aborted, total_tokens, cost_usd, billed_cost_usd)
);
-- "This month" queries filter on the month the views compute; the expression is immutable (a
-- date through timestamp without time zone), so the planner can use this index for it.
CREATE INDEX usage_daily_rollups_org_month ON usage_daily_rollups (organization_id, (date_trunc('month', day::timestamp)::date), external_user_id)
  INCLUDE (day, model, kind, user_id, requests, prompt_tokens, completion_tokens, cost_usd, billed_cost_usd);

-- What each insert statement adds to the rollups, appended in the insert's own transaction: no
-- index and no update, the cheapest write there is. Upserting usage_daily_rollups there instead
-- cost one row update per rollup key per batch, and at full speed nearly every row of a batch is
-- its own key: it halved the ledger's throughput. usage_rollup_compact() folds the deltas into
-- usage_daily_rollups every few seconds; readers add the few deltas not folded yet
-- (usage_daily_totals), so every read is exact at every moment.
CREATE TABLE usage_rollup_deltas (LIKE usage_daily_rollups);

-- The rollups as of now: folded rows plus the deltas not folded yet. Read this, not the table.
CREATE VIEW usage_daily_totals AS
SELECT organization_id, day, external_user_id, model, kind,
       sum(requests)::bigint AS requests, sum(failed_or_aborted)::bigint AS failed_or_aborted,
       sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens,
       sum(total_tokens)::bigint AS total_tokens, sum(cached_tokens)::bigint AS cached_tokens,
       sum(reasoning_tokens)::bigint AS reasoning_tokens, sum(cost_usd) AS cost_usd,
       sum(upstream_cost_usd) AS upstream_cost_usd, sum(billed_cost_usd) AS billed_cost_usd, max(user_id) AS user_id
FROM (SELECT * FROM usage_daily_rollups UNION ALL SELECT * FROM usage_rollup_deltas) r
GROUP BY 1, 2, 3, 4, 5;

-- Moves every committed delta into usage_daily_rollups in one statement: a delta is folded
-- exactly once (a concurrent compaction skips the rows this one deleted), upserts in key order.
CREATE FUNCTION usage_rollup_compact () RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  n bigint;
BEGIN
  WITH moved AS (DELETE FROM usage_rollup_deltas RETURNING *),
  folded AS (
    INSERT INTO usage_daily_rollups AS u
    SELECT organization_id, day, external_user_id, model, kind,
           sum(requests), sum(failed_or_aborted), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens),
           sum(cached_tokens), sum(reasoning_tokens), sum(cost_usd), sum(upstream_cost_usd), sum(billed_cost_usd), max(user_id)
    FROM moved GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
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
      user_id = greatest(u.user_id, excluded.user_id)
    RETURNING 1)
  SELECT count(*) INTO n FROM folded;
  RETURN n;
END $$;

-- One definition of a rollup row from raw rows: used by the trigger, the conversion below and
-- `usage-proxy verify`, so the three can never disagree about what a rollup means.
CREATE FUNCTION usage_rollup_select (source text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT format($q$
    SELECT organization_id, (created_at AT TIME ZONE 'UTC')::date AS day, external_user_id,
           coalesce(served_model, model, '') AS model, kind,
           count(*) AS requests,
           count(*) FILTER (WHERE outcome <> 'ok') AS failed_or_aborted,
           coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(completion_tokens), 0) AS completion_tokens,
           coalesce(sum(total_tokens), 0) AS total_tokens,
           coalesce(sum(cached_tokens), 0) AS cached_tokens,
           coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
           coalesce(sum(cost_usd), 0) AS cost_usd,
           coalesce(sum(upstream_cost_usd), 0) AS upstream_cost_usd,
           coalesce(sum(billed_cost_usd), 0) AS billed_cost_usd,
           max(user_id) AS user_id
    FROM %s
    GROUP BY 1, 2, 3, 4, 5$q$, source)
$$;

-- After each insert statement, in its transaction, set-based (no per-row trigger on the hot path),
-- static SQL (plans cached per connection):
-- 1. claim each new generation id in usage_generation_ids, in id order; a row whose id was
--    already claimed (or claimed twice in this statement) is a replay and is deleted again, so
--    the statement's net effect is exactly INSERT ... ON CONFLICT DO NOTHING's on the old
--    UNIQUE (generation_id); a concurrent replay waits on the first claimer's entry, as it did.
--    The common case (every id new) costs one count and no delete;
-- 2. append the surviving rows' sums to usage_rollup_deltas. The SELECT is
--    usage_rollup_select's, written out for the plan cache; `usage-proxy verify` would show any
--    drift between the two.
CREATE FUNCTION usage_after_insert () RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  claimed text[];
  with_id bigint;
  losers uuid[] := '{}';
  r record;
BEGIN
  WITH c AS (
    INSERT INTO usage_generation_ids (generation_id, created_at)
    SELECT DISTINCT ON (generation_id) generation_id, created_at FROM inserted_rows
    WHERE generation_id IS NOT NULL ORDER BY generation_id, event_id
    ON CONFLICT DO NOTHING RETURNING generation_id)
  SELECT coalesce(array_agg(generation_id), '{}') INTO claimed FROM c;
  SELECT count(*) INTO with_id FROM inserted_rows WHERE generation_id IS NOT NULL;
  IF cardinality(claimed) < with_id THEN
    FOR r IN
      SELECT i.event_id, i.created_at FROM inserted_rows i
      LEFT JOIN (SELECT DISTINCT ON (generation_id) generation_id, event_id FROM inserted_rows
                 WHERE generation_id IS NOT NULL ORDER BY generation_id, event_id) f
        ON f.event_id = i.event_id AND f.generation_id = ANY (claimed)
      WHERE i.generation_id IS NOT NULL AND f.event_id IS NULL
    LOOP
      DELETE FROM usage_events WHERE event_id = r.event_id AND created_at = r.created_at;
      losers := losers || r.event_id;
    END LOOP;
  END IF;
  INSERT INTO usage_rollup_deltas
    SELECT organization_id, (created_at AT TIME ZONE 'UTC')::date AS day, external_user_id,
           coalesce(served_model, model, '') AS model, kind,
           count(*) AS requests,
           count(*) FILTER (WHERE outcome <> 'ok') AS failed_or_aborted,
           coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(completion_tokens), 0) AS completion_tokens,
           coalesce(sum(total_tokens), 0) AS total_tokens,
           coalesce(sum(cached_tokens), 0) AS cached_tokens,
           coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
           coalesce(sum(cost_usd), 0) AS cost_usd,
           coalesce(sum(upstream_cost_usd), 0) AS upstream_cost_usd,
           coalesce(sum(billed_cost_usd), 0) AS billed_cost_usd,
           max(user_id) AS user_id
    FROM inserted_rows
    WHERE cardinality(losers) = 0 OR NOT (event_id = ANY (losers))
    GROUP BY 1, 2, 3, 4, 5;
  RETURN NULL;
END $$;

DO $convert$
DECLARE
  cols text;
  obj record;
  views text[] := '{}';
  drops text[] := '{}';
  incoming text[] := '{}';
  indexes text[] := '{}';
  triggers text[] := '{}';
  fkeys text[] := '{}';
  uniques text[] := '{}';
  first_month date;
  last_month date;
  m date;
  stmt text;
BEGIN
  -- 1. Remember what hangs on the old table, as text that names `usage_events`.
  FOR obj IN
    WITH RECURSIVE deps AS (
      SELECT DISTINCT r.ev_class AS oid FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid
      WHERE d.refobjid = 'usage_events'::regclass AND r.ev_class <> 'usage_events'::regclass
      UNION
      SELECT r.ev_class FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid JOIN deps ON d.refobjid = deps.oid
      WHERE r.ev_class <> deps.oid
    )
    SELECT c.oid, c.relkind, format('%I.%I', n.nspname, c.relname) AS name
    FROM deps JOIN pg_class c ON c.oid = deps.oid JOIN pg_namespace n ON n.oid = c.relnamespace
    ORDER BY c.oid
  LOOP
    drops := drops || format('DROP %s IF EXISTS %s CASCADE', CASE obj.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, obj.name);
    views := views || format('CREATE %s %s AS %s', CASE obj.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END,
      obj.name, pg_get_viewdef(obj.oid));
  END LOOP;
  SELECT coalesce(array_agg(pg_get_indexdef(i.indexrelid) ORDER BY i.indexrelid), '{}') INTO indexes
  FROM pg_index i WHERE i.indrelid = 'usage_events'::regclass AND NOT i.indisunique
    AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid);
  SELECT coalesce(array_agg(pg_get_triggerdef(t.oid) ORDER BY t.oid), '{}') INTO triggers
  FROM pg_trigger t WHERE t.tgrelid = 'usage_events'::regclass AND NOT t.tgisinternal;
  SELECT coalesce(array_agg(format('ALTER TABLE usage_events ADD CONSTRAINT %I %s', conname, pg_get_constraintdef(oid)) ORDER BY oid), '{}')
    INTO fkeys FROM pg_constraint WHERE conrelid = 'usage_events'::regclass AND contype = 'f';
  -- Unique constraints other than event_id's and generation_id's gain created_at, as they must.
  SELECT coalesce(array_agg(format('ALTER TABLE usage_events ADD CONSTRAINT %I UNIQUE (%s, created_at)', c.conname,
           (SELECT string_agg(quote_ident(a.attname), ', ') FROM unnest(c.conkey) k JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k))
         ORDER BY c.oid), '{}')
    INTO uniques FROM pg_constraint c
  WHERE c.conrelid = 'usage_events'::regclass AND c.contype = 'u'
    AND c.conkey <> ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = 'usage_events'::regclass AND attname = 'generation_id')]
    AND NOT (SELECT attnum FROM pg_attribute WHERE attrelid = 'usage_events'::regclass AND attname = 'created_at') = ANY (c.conkey);

  -- 2. Out of the way: views, then the table (its indexes renamed so their names are free).
  FOR obj IN SELECT i.indexrelid::regclass AS name FROM pg_index i WHERE i.indrelid = 'usage_events'::regclass AND i.indisunique
      AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) LOOP
    RAISE WARNING 'unique index % not carried over: a partitioned table''s unique index must include created_at', obj.name;
  END LOOP;
  -- A foreign key pointing at usage_events needs a unique key the partitioned table cannot
  -- have without created_at: it is recreated if it can be, else dropped with a warning.
  FOR obj IN SELECT conrelid::regclass AS tbl, conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
      WHERE confrelid = 'usage_events'::regclass AND contype = 'f' ORDER BY oid LOOP
    incoming := incoming || format('ALTER TABLE %s ADD CONSTRAINT %I %s', obj.tbl, obj.conname, obj.def);
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', obj.tbl, obj.conname);
  END LOOP;
  FOR i IN REVERSE coalesce(array_length(drops, 1), 0) .. 1 LOOP EXECUTE drops[i]; END LOOP;
  ALTER TABLE usage_events RENAME TO usage_events_unpartitioned;
  FOR obj IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'usage_events_unpartitioned'::regclass LOOP
    EXECUTE format('ALTER INDEX %I RENAME TO %I', obj.relname, left('old_' || obj.relname, 63));
  END LOOP;

  -- 3. The partitioned table, same columns in the same order, and a partition per month of data.
  CREATE TABLE usage_events (LIKE usage_events_unpartitioned INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS INCLUDING COMMENTS)
    PARTITION BY RANGE (created_at);
  CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT;
  SELECT date_trunc('month', min(created_at) AT TIME ZONE 'UTC')::date, date_trunc('month', max(created_at) AT TIME ZONE 'UTC')::date
    INTO first_month, last_month FROM usage_events_unpartitioned;
  m := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
  first_month := least(coalesce(first_month, m), m);
  last_month := greatest(coalesce(last_month, m), (m + interval '2 months')::date);
  m := first_month;
  WHILE m <= last_month LOOP
    PERFORM usage_ensure_partition(m);
    m := (m + interval '1 month')::date;
  END LOOP;

  -- 4. Every row, then what the triggers would have built had the rows come one statement at a time.
  cols := usage_events_insert_columns();
  EXECUTE format('INSERT INTO usage_events (%s) SELECT %s FROM usage_events_unpartitioned', cols, cols);
  INSERT INTO usage_generation_ids (generation_id, created_at)
    SELECT generation_id, created_at FROM usage_events WHERE generation_id IS NOT NULL;
  EXECUTE 'INSERT INTO usage_daily_rollups ' || usage_rollup_select('usage_events');
  DROP TABLE usage_events_unpartitioned;

  -- 5. Keys, indexes, foreign keys, triggers and views, as they were.
  ALTER TABLE usage_events ADD PRIMARY KEY (event_id, created_at);
  FOREACH stmt IN ARRAY uniques LOOP EXECUTE stmt; END LOOP;
  FOREACH stmt IN ARRAY indexes LOOP EXECUTE stmt; END LOOP;
  FOREACH stmt IN ARRAY fkeys LOOP EXECUTE stmt; END LOOP;
  FOREACH stmt IN ARRAY triggers LOOP EXECUTE stmt; END LOOP;
  FOREACH stmt IN ARRAY views LOOP EXECUTE stmt; END LOOP;
  FOREACH stmt IN ARRAY incoming LOOP
    BEGIN EXECUTE stmt;
    EXCEPTION WHEN others THEN RAISE WARNING 'foreign key not recreated (%): %', SQLERRM, stmt;
    END;
  END LOOP;
END $convert$;

CREATE TRIGGER usage_events_after_insert AFTER INSERT ON usage_events
  REFERENCING NEW TABLE AS inserted_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_after_insert();

-- Maintenance bookkeeping: partition creation and retention run once a day, by one replica.
CREATE TABLE usage_maintenance (
  id       boolean PRIMARY KEY DEFAULT true CHECK (id),
  ran_on   date NOT NULL,
  ran_at   timestamptz NOT NULL DEFAULT now(),
  detail   jsonb NOT NULL DEFAULT '{}'
);

-- The billing views read the rollups (folded rows plus deltas): whole days and the current day
-- alike, since the deltas are written in the same transaction as the rows (the current day is as
-- exact there as in the raw rows, and reading it raw would mean scanning a whole day's rows).
-- Same columns and types as sql/005 (grouped by kind too). A view some other migration reshaped
-- differently keeps its own shape (the replacement is refused and a warning says so).
DO $views$
BEGIN
  BEGIN
    CREATE OR REPLACE VIEW spend_per_user_month AS
    SELECT r.organization_id,
           date_trunc('month', r.day::timestamp)::date AS month,
           r.external_user_id,
           coalesce(max(r.user_id), max(m.user_id))  AS user_id,
           max(m.user_name)                          AS user_name,
           max(m.user_email)                         AS user_email,
           r.kind,
           sum(r.requests)::bigint                   AS requests,
           sum(r.prompt_tokens)::bigint              AS prompt_tokens,
           sum(r.completion_tokens)::bigint          AS completion_tokens,
           coalesce(sum(r.cost_usd), 0)              AS cost_usd,
           coalesce(sum(r.billed_cost_usd), 0)       AS billed_cost_usd
    FROM (SELECT * FROM usage_daily_rollups UNION ALL SELECT * FROM usage_rollup_deltas) r
    LEFT JOIN user_mappings m
      ON m.organization_id = r.organization_id AND m.external_user_id = r.external_user_id
    GROUP BY r.organization_id, 2, r.external_user_id, r.kind;
  EXCEPTION WHEN others THEN RAISE WARNING 'spend_per_user_month kept as it was: %', SQLERRM;
  END;
  BEGIN
    CREATE OR REPLACE VIEW spend_per_model_month AS
    SELECT organization_id,
           date_trunc('month', day::timestamp)::date AS month,
           nullif(model, '')                         AS model,
           kind,
           sum(requests)::bigint                     AS requests,
           sum(prompt_tokens)::bigint                AS prompt_tokens,
           sum(completion_tokens)::bigint            AS completion_tokens,
           coalesce(sum(cost_usd), 0)                AS cost_usd,
           coalesce(sum(billed_cost_usd), 0)         AS billed_cost_usd
    FROM (SELECT * FROM usage_daily_rollups UNION ALL SELECT * FROM usage_rollup_deltas) r
    GROUP BY 1, 2, 3, 4;
  EXCEPTION WHEN others THEN RAISE WARNING 'spend_per_model_month kept as it was: %', SQLERRM;
  END;
  BEGIN
    CREATE OR REPLACE VIEW spend_per_day AS
    SELECT organization_id,
           day,
           kind,
           sum(requests)::bigint                     AS requests,
           sum(failed_or_aborted)::bigint            AS failed_or_aborted,
           sum(total_tokens)::bigint                 AS total_tokens,
           coalesce(sum(cost_usd), 0)                AS cost_usd,
           coalesce(sum(billed_cost_usd), 0)         AS billed_cost_usd
    FROM (SELECT * FROM usage_daily_rollups UNION ALL SELECT * FROM usage_rollup_deltas) r
    GROUP BY 1, 2, 3;
  EXCEPTION WHEN others THEN RAISE WARNING 'spend_per_day kept as it was: %', SQLERRM;
  END;
END $views$;
