-- Monthly partitions of usage_events (the table is made partitioned in sql/007): their names
-- (usage_events_YYYY_MM; rows outside every month go to the default partition), their creation
-- ahead of the month and their retention. src/db/partitions.ts calls these once a day, from one
-- replica. src/db/migrate.ts applies this file at every boot after the numbered migrations.

-- The columns an INSERT ... SELECT copies from one partition to another (generated ones are not
-- written).
CREATE OR REPLACE FUNCTION usage_events_insert_columns () RETURNS text LANGUAGE sql STABLE AS $$
  SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
  FROM pg_attribute
  WHERE attrelid = 'usage_events'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
$$;

-- Creates the partition of `month` unless it exists; rows already sitting in the default
-- partition for that month are moved into it (a partition cannot be created over them).
CREATE OR REPLACE FUNCTION usage_ensure_partition (month date) RETURNS boolean LANGUAGE plpgsql AS $$
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
CREATE OR REPLACE FUNCTION usage_drop_partitions_before (cutoff date) RETURNS text[] LANGUAGE plpgsql AS $$
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
