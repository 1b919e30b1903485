-- The triggers of sql/functions/ are (re)created through this, at every boot: a trigger that is
-- already exactly as wanted is left alone, so a boot takes no lock on usage_events or budgets
-- (DROP and CREATE TRIGGER would wait for every transaction on the table and hold up every
-- reader behind them). Any other trigger on the table running the same function (a renamed
-- copy) is dropped: the function fires under the names given here and no other.
-- p_definitions: each wanted trigger as pg_get_triggerdef() prints it, with %s for the table (printed
-- schema-qualified, as pg_get_triggerdef() prints it).
CREATE OR REPLACE FUNCTION ensure_triggers(p_table regclass, p_function regproc, p_names text[], p_definitions text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  t record;
  k integer;
  qualified text := (SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_table);
BEGIN
  FOR t IN SELECT tgname, pg_get_triggerdef(oid) AS def FROM pg_trigger
            WHERE tgrelid = p_table AND NOT tgisinternal AND tgparentid = 0 AND (tgfoid = p_function OR tgname = ANY (p_names)) LOOP
    k := array_position(p_names, t.tgname::text);
    IF k IS NULL OR t.def <> format(p_definitions[k], qualified) THEN
      EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, p_table);
    END IF;
  END LOOP;
  FOR k IN 1 .. cardinality(p_names) LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = p_table AND tgname = p_names[k]) THEN
      EXECUTE format(p_definitions[k], qualified);
    END IF;
  END LOOP;
END
$$;
