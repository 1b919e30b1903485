-- The audit trail is append-only (sql/016_audit_log.sql): UPDATE and DELETE are refused, except
-- inside a transaction that set usage_proxy.audit_rewrite to 'forget' (forgetting a user
-- replaces their id in the trail by its pseudonym; see docs/privacy in README).
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND current_setting('usage_proxy.audit_rewrite', true) = 'forget' THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;

SELECT ensure_triggers('audit_log', 'audit_log_append_only', ARRAY['audit_log_append_only'], ARRAY[
  'CREATE TRIGGER audit_log_append_only BEFORE DELETE OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()']);
