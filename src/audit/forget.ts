import type { Sql } from '../db/connect.js'
import { appendAudit } from './audit.js'

// Forgetting a user (README "Privacy", sql/functions/8-forget.sql): the rewrite and its audit
// line in one transaction, so the trail records exactly the forgets that happened. The audit line
// names the pseudonym (users/<pseudonym>), never the id that was erased.

export interface Forgotten {
  /** 'forgotten:' + 16 hex digits: the same for the same user, every time. */
  pseudonym: string
  /** True when this call changed nothing: the user was forgotten before and has no newer rows. */
  alreadyForgotten: boolean
}

/** null: nothing names the user in this organization (and nobody by that id was forgotten). */
export async function forgetUser (sql: Sql, organizationId: string, userId: string, actor: string): Promise<Forgotten | null> {
  return await sql.begin(async (t) => {
    const tx = t as unknown as Sql
    // A pseudonym names nobody to forget: asking for it again answers as a second forget would.
    // Only a known one: a client may call itself "forgotten:..." and must be forgettable too.
    if (userId.startsWith('forgotten:')) {
      const [known] = await tx`select 1 from forgotten_users where organization_id = ${organizationId} and pseudonym = ${userId}`
      if (known) return { pseudonym: userId, alreadyForgotten: true }
    }
    const [row] = await tx<Array<{ p: string | null }>>`select forget_user(${organizationId}, ${userId}) as p`
    if (row.p !== null) {
      await appendAudit(tx, organizationId, { actor, action: 'user.forgotten', target: `users/${row.p}`, before: null, after: { user_id: row.p } })
      return { pseudonym: row.p, alreadyForgotten: false }
    }
    const [seen] = await tx<Array<{ p: string | null }>>`
      select f.pseudonym as p from forgotten_users f
       where f.organization_id = ${organizationId} and f.pseudonym = forget_pseudonym(${organizationId}, ${userId})`
    return seen ? { pseudonym: seen.p!, alreadyForgotten: true } : null
  }) as Forgotten | null
}
