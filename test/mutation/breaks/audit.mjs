// Breaks of the audit trail and of forgetting a user (sql/functions/7-audit.sql, 8-forget.sql,
// src/audit, the admin router and the env seeding): each must make the named tests fail.
const FORGET = ['test/forget.test.ts']
const AUDIT = ['test/audit.test.ts']
const CONCURRENT = ['test/forget-concurrency.test.ts']
export const BREAKS = [
  {
    name: 'audit: forget merges a daily rollup by overwriting the pseudonym\'s sum',
    file: 'sql/functions/8-forget.sql',
    search: '    billed_cost_usd = u.billed_cost_usd + excluded.billed_cost_usd,\n    user_id = greatest(u.user_id, excluded.user_id);\n  WITH moved AS (DELETE FROM usage_monthly_rollups',
    replace: '    billed_cost_usd = excluded.billed_cost_usd,\n    user_id = greatest(u.user_id, excluded.user_id);\n  WITH moved AS (DELETE FROM usage_monthly_rollups',
    tests: FORGET,
  },
  {
    name: 'audit: forget leaves the monthly rollups under the old id',
    file: 'sql/functions/8-forget.sql',
    search: 'DELETE FROM usage_monthly_rollups WHERE organization_id = p_org AND external_user_id = ANY (exts)',
    replace: 'DELETE FROM usage_monthly_rollups WHERE organization_id = p_org AND external_user_id = ANY (exts) AND false',
    tests: FORGET,
  },
  {
    name: 'audit: forget keeps the chat ids of the rows',
    file: 'sql/functions/8-forget.sql',
    search: '         chat_id = NULL, message_id = NULL\n',
    replace: '         message_id = NULL\n',
    tests: FORGET,
  },
  {
    name: 'audit: forget keeps the name on the mapping',
    file: 'sql/functions/8-forget.sql',
    search: "  SELECT organization_id, p, p_ext, NULL, NULL, NULL, first_seen_at, last_seen_at, '{}' FROM gone",
    replace: "  SELECT organization_id, p, p_ext, user_name, user_email, NULL, first_seen_at, last_seen_at, '{}' FROM gone",
    tests: FORGET,
  },
  {
    name: 'audit: forget leaves the audit targets naming the id',
    file: 'sql/functions/8-forget.sql',
    search: "THEN left(target, length(target) - length(p_user)) || p ELSE target END",
    replace: 'THEN target ELSE target END',
    tests: FORGET,
  },
  {
    name: 'audit: a record still queued for a forgotten user lands under the id',
    file: 'sql/functions/8-forget.sql',
    search: 'WHERE f.organization_id = NEW.organization_id AND f.pseudonym = p AND f.forgotten_at >= at)',
    replace: 'WHERE f.organization_id = NEW.organization_id AND f.pseudonym = p AND f.forgotten_at < at)',
    tests: [...FORGET, ...CONCURRENT],
  },
  {
    name: 'audit: forget is not idempotent (a second forget is a 404)',
    file: 'src/audit/forget.ts',
    search: 'return seen ? { pseudonym: seen.p!, alreadyForgotten: true } : null',
    replace: 'return null',
    tests: [...FORGET, ...AUDIT],
  },
  {
    name: 'audit: the forget rewrite setting lets a DELETE through',
    file: 'sql/functions/7-audit.sql',
    search: "  IF TG_OP = 'UPDATE' AND current_setting",
    replace: '  IF current_setting',
    tests: FORGET,
  },
  {
    name: 'audit: the trail is ordered by the id as text',
    file: 'src/audit/audit.ts',
    search: 'ORDER BY audit_log.id DESC',
    replace: 'ORDER BY id DESC',
    tests: AUDIT,
  },
  {
    name: 'audit: the cursor is ignored',
    file: 'src/admin/audit.ts',
    search: 'const rows = await auditPage(d.sql(), d.organizationId, limit + 1, before)',
    replace: 'const rows = await auditPage(d.sql(), d.organizationId, limit + 1, before && undefined)',
    tests: AUDIT,
  },
  {
    name: 'audit: every boot appends an env line, changed or not',
    file: 'src/budgets/store.ts',
    search: 'if (written.length > 0) {',
    replace: 'if (written.length >= 0) {',
    tests: AUDIT,
  },
  {
    name: 'audit: the actor is the admin key itself',
    file: 'src/admin/router.ts',
    search: "? actorOf('admin-key', fromHeader)",
    replace: '? `admin-key:${fromHeader}`',
    tests: AUDIT,
  },
  {
    name: 'audit: a budget change is recorded before it is known to have happened (no transaction)',
    file: 'src/admin/budgets.ts',
    search: "            if (deleted) await appendAudit(tx, org, { actor: r.actor, action: 'budget.deleted'",
    replace: "            await appendAudit(tx, org, { actor: r.actor, action: 'budget.deleted'",
    tests: AUDIT,
  },
]
