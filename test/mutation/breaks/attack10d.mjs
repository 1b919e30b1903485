// Breaks of the fixes an attack on groups found: a group id is one spelling wherever it arrives
// (NFC, invisible characters, the admin plane's ids read as the header's), and forgetting a user
// reaches the group rollups. Each must make the named tests fail.
const IDS = ['test/attack-s10d-group-ids.test.ts']
const FORGET = ['test/attack-s10d-forget-groups.test.ts']
export const BREAKS = [
  {
    name: 'attack10d: group names are not composed (NFD and NFC are two groups)',
    file: 'src/identity/groups.ts',
    search: ".replace(CONTROL, '').normalize('NFC').replace(CONTROL, '').trim()",
    replace: ".replace(CONTROL, '').trim()",
    tests: IDS,
  },
  {
    name: 'attack10d: an admin path group id is taken as given',
    file: 'src/admin/router.ts',
    search: 'decoded = g.id',
    replace: '',
    tests: IDS,
  },
  {
    name: 'attack10d: the usage filter group= is taken as given',
    file: 'src/admin/params.ts',
    search: 'return g.id',
    replace: 'return v',
    tests: IDS,
  },
  {
    name: 'attack10d: forget leaves the folded daily group rollups under the user',
    file: 'sql/functions/8-forget.sql',
    search: 'WITH moved AS (DELETE FROM usage_group_daily_rollups WHERE organization_id = p_org AND external_user_id = ANY (exts) RETURNING *)',
    replace: 'WITH moved AS (DELETE FROM usage_group_daily_rollups WHERE false RETURNING *)',
    tests: FORGET,
  },
  {
    name: 'attack10d: forget leaves the unfolded group deltas under the user',
    file: 'sql/functions/8-forget.sql',
    search: 'UPDATE usage_group_rollup_deltas SET external_user_id = p_ext',
    replace: 'UPDATE usage_group_rollup_deltas SET external_user_id = external_user_id',
    tests: FORGET,
  },
]
// The rewrite as it was: any target ending in /<id> and any JSON string equal to the id.
BREAKS.push({
  name: 'attack10d: forget rewrites every audit line naming the same text as the user id (a group\'s, a key\'s groups)',
  file: 'sql/functions/8-forget.sql',
  search: `    target = CASE WHEN right(target, length(p_user) + 7) = '/users/' || p_user THEN left(target, length(target) - length(p_user)) || p ELSE target END,
    before = replace(before::text, '"user_id": ' || to_jsonb(p_user)::text, '"user_id": ' || to_jsonb(p)::text)::jsonb,
    after = replace(after::text, '"user_id": ' || to_jsonb(p_user)::text, '"user_id": ' || to_jsonb(p)::text)::jsonb
   WHERE organization_id = p_org
     AND (right(target, length(p_user) + 7) = '/users/' || p_user
          OR strpos(before::text, '"user_id": ' || to_jsonb(p_user)::text) > 0 OR strpos(after::text, '"user_id": ' || to_jsonb(p_user)::text) > 0);`,
  replace: `    target = CASE WHEN right(target, length(p_user) + 1) = '/' || p_user THEN left(target, length(target) - length(p_user)) || p ELSE target END,
    before = replace(before::text, to_jsonb(p_user)::text, to_jsonb(p)::text)::jsonb,
    after = replace(after::text, to_jsonb(p_user)::text, to_jsonb(p)::text)::jsonb
   WHERE organization_id = p_org
     AND (right(target, length(p_user) + 1) = '/' || p_user
          OR strpos(before::text, to_jsonb(p_user)::text) > 0 OR strpos(after::text, to_jsonb(p_user)::text) > 0);`,
  tests: FORGET,
})
