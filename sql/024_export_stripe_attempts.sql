-- Stripe meter events sent and not answered yet (sql/021): the customer each row was sent to,
-- written before the send and deleted once Stripe answers (taken, refused, or a duplicate). A send
-- whose answer was lost may have been kept by Stripe under that customer; its retry, in this
-- process, in another replica after a handover or after a crash, goes to the same customer
-- whatever the mapping or the row's age say by then, so Stripe's duplicate answer settles the
-- totals of the customer Stripe counted (export_stripe_totals), and a row Stripe holds is never
-- set aside. Rows live here for the length of a send, or of an outage.
CREATE TABLE IF NOT EXISTS export_stripe_attempts (
  organization_id    text NOT NULL,
  event_id           uuid NOT NULL,
  stripe_customer_id text NOT NULL,
  attempted_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, event_id)
);
