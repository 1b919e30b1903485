-- The usage page's "failed, aborted and refused" table groups by outcome, which the daily rollups
-- do not keep. This index holds only the rows that did not end 'ok' (a few percent), so that table
-- reads those rows alone and takes 'ok' as the rollups' totals minus them. Rows that end 'ok',
-- nearly every insert, never touch it.
CREATE INDEX usage_events_org_not_ok ON usage_events (organization_id, created_at) WHERE outcome <> 'ok';
