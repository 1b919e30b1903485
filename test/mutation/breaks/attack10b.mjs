// Breaks of the fixes an attack on forgetting a user found: the group rollups, the user's API
// keys and Stripe customer moved with the user, the audit rewrite kept to user_id fields, the key
// copy let go of the forgotten user's keys, and an id starting with "forgotten:" still forgettable.
const FORGET = ['test/attack-s10b-forget.test.ts']
export const BREAKS = [
  {
    name: 'attack10b: forget leaves the group daily rollups under the erased id',
    file: 'sql/functions/8-forget.sql',
    search: 'WITH moved AS (DELETE FROM usage_group_daily_rollups WHERE organization_id = p_org AND external_user_id = ANY (exts) RETURNING *)',
    replace: 'WITH moved AS (DELETE FROM usage_group_daily_rollups WHERE false RETURNING *)',
    tests: FORGET,
  },
  {
    name: 'attack10b: forget leaves the unfolded group deltas under the erased id',
    file: 'sql/functions/8-forget.sql',
    search: 'UPDATE usage_group_rollup_deltas SET external_user_id = p_ext',
    replace: 'UPDATE usage_group_rollup_deltas SET external_user_id = external_user_id',
    tests: FORGET,
  },
  {
    name: 'attack10b: forget leaves api_keys.user_id naming the user',
    file: 'sql/functions/8-forget.sql',
    search: 'UPDATE api_keys SET user_id = p WHERE',
    replace: 'UPDATE api_keys SET user_id = user_id WHERE',
    tests: FORGET,
  },
  {
    name: 'attack10b: forget leaves the Stripe customer under the erased id',
    file: 'sql/functions/8-forget.sql',
    search: "DELETE FROM billing_customers WHERE organization_id = p_org AND scope = 'user' AND subject = p_user RETURNING *",
    replace: 'DELETE FROM billing_customers WHERE false RETURNING *',
    tests: FORGET,
  },
  {
    name: 'attack10b: the audit rewrite replaces every JSON string equal to the id',
    file: 'sql/functions/8-forget.sql',
    search: `after = replace(after::text, '"user_id": ' || to_jsonb(p_user)::text, '"user_id": ' || to_jsonb(p)::text)::jsonb
   WHERE organization_id = p_org
     AND (right(target, length(p_user) + 7) = '/users/' || p_user`,
    replace: `after = replace(after::text, to_jsonb(p_user)::text, to_jsonb(p)::text)::jsonb
   WHERE organization_id = p_org
     AND (right(target, length(p_user) + 7) = '/users/' || p_user OR strpos(after::text, to_jsonb(p_user)::text) > 0`,
    tests: FORGET,
  },
  {
    name: 'attack10b: the key copy keeps a forgotten user\'s keys until the next refresh',
    file: 'src/keys/ring.ts',
    search: 'if (key.userId === userId) this.live.delete(hash)',
    replace: 'if (key.userId === userId && false) this.live.delete(hash)',
    tests: FORGET,
  },
  {
    name: 'attack10b: an id starting with "forgotten:" is never forgotten',
    file: 'src/audit/forget.ts',
    search: 'if (known) return { pseudonym: userId, alreadyForgotten: true }',
    replace: 'return known ? { pseudonym: userId, alreadyForgotten: true } : null',
    tests: FORGET,
  },
]
