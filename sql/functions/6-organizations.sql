-- What the foreign key from usage_events to organizations guarded besides the insert (checked in
-- 3-usage-after-insert.sql, step 0): an organization that has usage is neither deleted nor
-- renamed. Raises the foreign key's own SQLSTATE (23503). src/db/migrate.ts applies this file at
-- every boot after the numbered migrations.
CREATE OR REPLACE FUNCTION organizations_keep_usage () RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (TG_OP = 'DELETE' OR NEW.id IS DISTINCT FROM OLD.id)
     AND EXISTS (SELECT 1 FROM usage_events WHERE organization_id = OLD.id) THEN
    RAISE foreign_key_violation USING
      MESSAGE = format('organization %L still has usage_events rows', OLD.id),
      TABLE = 'organizations';
  END IF;
  RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END $$;

SELECT ensure_triggers('organizations', 'organizations_keep_usage', ARRAY['organizations_keep_usage'], ARRAY[
  'CREATE TRIGGER organizations_keep_usage BEFORE DELETE OR UPDATE OF id ON %s FOR EACH ROW EXECUTE FUNCTION organizations_keep_usage()']);
