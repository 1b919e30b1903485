import { pgText } from '../lib/text.js'
import { externalUserId } from './external-id.js'
import type { Identity } from './identify.js'

// Who a user is, normalized once: the cleaned user id (pgText, as Postgres will store it) is what
// the external id is derived from, so `zed` and `z\u0000ed` are one user with one external id,
// never two rows fighting over one key. The mapping itself is not written from here: it rides in
// the user's usage record (journaled, then upserted in the same statement as the usage row), so it
// is exactly as durable as the usage. This map only decides when a record needs to carry it: a new
// user, a changed name/email/role or groups, or once a minute (last_seen_at). Losing an entry costs one
// extra upsert, never data, so the map is simply capped.

/** The user's details as the ledger stores them beside their rows. */
export interface UserMapping {
  userId: string
  name: string | null
  email: string | null
  role: string | null
  /** The user's groups as of this request (user_mappings.groups keeps the latest); absent on journal lines of old versions. */
  groups?: string[]
}

export interface ResolvedUser {
  /** The normalized app user id, or null when the organization itself is billed. */
  userId: string | null
  externalUserId: string
  /** Set when this request's record must carry the mapping to user_mappings. */
  mapping: UserMapping | null
}

interface Entry { externalUserId: string, name: string | null, email: string | null, role: string | null, groups: string[], carriedAt: number }

const sameGroups = (a: string[], b: string[]): boolean => a.length === b.length && a.every((g, i) => g === b[i])

const REFRESH_LAST_SEEN_MS = 60_000
const MAX_ENTRIES = 100_000

export class UserDirectory {
  private readonly users = new Map<string, Entry>()

  constructor (private readonly organizationId: string) {}

  get size (): number { return this.users.size }

  /** The normalized user id alone (null: the organization), as resolve() would give it, with no side effect. */
  userIdOf (who: Identity): string | null {
    const userId = who.userId === null ? null : pgText(who.userId)
    return userId === null || userId === '' ? null : userId
  }

  /** The external id alone, for an exchange that writes no record: the mapping stays due. */
  externalIdOf (who: Identity): string {
    const userId = this.userIdOf(who)
    if (userId === null) return this.organizationId
    return this.users.get(userId)?.externalUserId ?? externalUserId(this.organizationId, userId)
  }

  resolve (who: Identity, now = Date.now()): ResolvedUser {
    const userId = who.userId === null ? null : pgText(who.userId)
    if (userId === null || userId === '') return { userId: null, externalUserId: this.organizationId, mapping: null }
    const name = pgText(who.name)
    const email = pgText(who.email)
    const role = pgText(who.role)
    let e = this.users.get(userId)
    if (!e) {
      if (this.users.size >= MAX_ENTRIES) this.evictOldest()
      e = { externalUserId: externalUserId(this.organizationId, userId), name, email, role, groups: who.groups, carriedAt: now }
      this.users.set(userId, e)
      return { userId, externalUserId: e.externalUserId, mapping: { userId, name, email, role, groups: who.groups } }
    }
    // Groups are replaced, not merged: a user taken out of every group is in none ([]).
    const changed = (name !== null && name !== e.name) || (email !== null && email !== e.email) || (role !== null && role !== e.role) ||
      !sameGroups(who.groups, e.groups)
    if (!changed && now - e.carriedAt <= REFRESH_LAST_SEEN_MS) return { userId, externalUserId: e.externalUserId, mapping: null }
    e.name = name ?? e.name
    e.email = email ?? e.email
    e.role = role ?? e.role
    e.groups = who.groups
    e.carriedAt = now
    return { userId, externalUserId: e.externalUserId, mapping: { userId, name: e.name, email: e.email, role: e.role, groups: e.groups } }
  }

  /**
   * The user was forgotten (their mapping is now the pseudonym's): the next request under this id
   * is a new user and carries its mapping again. Other replicas carry it within a minute
   * (REFRESH_LAST_SEEN_MS).
   */
  forget (userId: string): void {
    this.users.delete(pgText(userId))
  }

  private evictOldest (): void {
    // Map order is insertion order: drop the oldest half in one go, not one entry per request.
    let drop = this.users.size - MAX_ENTRIES / 2
    for (const id of this.users.keys()) { if (drop-- <= 0) break; this.users.delete(id) }
  }
}
