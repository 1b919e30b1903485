-- usage_events keeps its reference to organizations, checked once per insert statement instead of
-- once per row. The foreign key's per-row check was 12% of a 2,000-row ledger batch's time in
-- Postgres (EXPLAIN ANALYZE, BENCHMARKS.md "Ledger write throughput"); the statement trigger
-- below asks the same question of the statement's distinct organizations. What the key also
-- guarded, deleting (or renaming) an organization that has usage, stays refused by the trigger on
-- organizations. Both raise the foreign key's own SQLSTATE (23503), so the ledger keeps treating
-- a missing organization as "retry later", never as bad data to set aside.
DO $$
DECLARE fk record;
BEGIN
  FOR fk IN SELECT conname FROM pg_constraint
            WHERE conrelid = 'usage_events'::regclass AND contype = 'f' AND confrelid = 'organizations'::regclass
  LOOP
    EXECUTE format('ALTER TABLE usage_events DROP CONSTRAINT %I', fk.conname);
  END LOOP;
END $$;

CREATE FUNCTION usage_events_check_organizations () RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE missing text;
BEGIN
  -- The lock the foreign key took per row, once per organization: a concurrent DELETE of one of
  -- them waits for this transaction, then finds its usage and is refused (or, if it came first,
  -- this check finds the organization gone).
  PERFORM 1 FROM organizations o WHERE o.id IN (SELECT organization_id FROM inserted_rows) ORDER BY o.id FOR KEY SHARE;
  SELECT i.organization_id INTO missing
    FROM (SELECT DISTINCT organization_id FROM inserted_rows) i
    LEFT JOIN organizations o ON o.id = i.organization_id
   WHERE o.id IS NULL
   LIMIT 1;
  IF FOUND THEN
    RAISE foreign_key_violation USING
      MESSAGE = format('insert into usage_events refers to organization %L, which does not exist', missing),
      TABLE = 'usage_events';
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER usage_events_check_organizations AFTER INSERT ON usage_events
  REFERENCING NEW TABLE AS inserted_rows FOR EACH STATEMENT EXECUTE FUNCTION usage_events_check_organizations();

CREATE FUNCTION organizations_keep_usage () RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (TG_OP = 'DELETE' OR NEW.id IS DISTINCT FROM OLD.id)
     AND EXISTS (SELECT 1 FROM usage_events WHERE organization_id = OLD.id) THEN
    RAISE foreign_key_violation USING
      MESSAGE = format('organization %L still has usage_events rows', OLD.id),
      TABLE = 'organizations';
  END IF;
  RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER organizations_keep_usage BEFORE DELETE OR UPDATE OF id ON organizations
  FOR EACH ROW EXECUTE FUNCTION organizations_keep_usage();
