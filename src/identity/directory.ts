import type { Sql } from '../db/connect.js'
import { describe } from '../db/connect.js'
import { pgText } from '../db/text.js'
import type { Logger } from '../log.js'
import { externalUserId } from './external-id.js'
import type { Identity } from './identify.js'

// The user mapping, kept in memory and written to user_mappings in batches: a new user or a
// changed name is written within a second; last_seen_at is refreshed at most once a minute per
// user. No request waits for, or causes, a database round trip of its own.

interface Entry {
  userId: string
  externalUserId: string
  name: string | null
  email: string | null
  role: string | null
  firstSeen: Date
  lastSeen: Date
  dirty: boolean
  flushedAt: number
}

const REFRESH_LAST_SEEN_MS = 60_000
const MAX_ENTRIES = 100_000

export class UserDirectory {
  private readonly users = new Map<string, Entry>()
  private timer: NodeJS.Timeout | null = null
  private flushing: Promise<void> | null = null

  constructor (private readonly organizationId: string, private readonly sql: Sql, private readonly log: Logger) {}

  /** The external id for this identity; remembers the user for the next flush. */
  externalIdFor (who: Identity, now = Date.now()): string {
    if (who.userId === null) return this.organizationId
    let e = this.users.get(who.userId)
    if (!e) {
      if (this.users.size >= MAX_ENTRIES) this.evictClean()
      const at = new Date(now)
      e = { userId: who.userId, externalUserId: externalUserId(this.organizationId, who.userId), name: who.name, email: who.email, role: who.role, firstSeen: at, lastSeen: at, dirty: true, flushedAt: 0 }
      this.users.set(who.userId, e)
      this.schedule()
      return e.externalUserId
    }
    if ((who.name !== null && who.name !== e.name) || (who.email !== null && who.email !== e.email) || (who.role !== null && who.role !== e.role)) {
      e.name = who.name ?? e.name
      e.email = who.email ?? e.email
      e.role = who.role ?? e.role
      e.dirty = true
    }
    if (now - e.flushedAt > REFRESH_LAST_SEEN_MS) e.dirty = true
    e.lastSeen = new Date(now)
    if (e.dirty) this.schedule()
    return e.externalUserId
  }

  async flush (): Promise<void> {
    if (this.flushing) return this.flushing
    const batch = [...this.users.values()].filter((e) => e.dirty)
    if (batch.length === 0) return
    for (const e of batch) e.dirty = false
    this.flushing = (async () => {
      try {
        for (let i = 0; i < batch.length; i += 1000) {
          const rows = batch.slice(i, i + 1000).map((e) => ({
            organization_id: this.organizationId, user_id: pgText(e.userId), external_user_id: e.externalUserId,
            user_name: pgText(e.name), user_email: pgText(e.email), user_role: pgText(e.role), first_seen_at: e.firstSeen, last_seen_at: e.lastSeen,
          }))
          await this.sql`
            insert into user_mappings ${this.sql(rows)}
            on conflict (organization_id, user_id) do update set
              user_name = coalesce(excluded.user_name, user_mappings.user_name),
              user_email = coalesce(excluded.user_email, user_mappings.user_email),
              user_role = coalesce(excluded.user_role, user_mappings.user_role),
              first_seen_at = least(user_mappings.first_seen_at, excluded.first_seen_at),
              last_seen_at = greatest(user_mappings.last_seen_at, excluded.last_seen_at)`
        }
        const now = Date.now()
        for (const e of batch) e.flushedAt = now
      } catch (err) {
        for (const e of batch) e.dirty = true
        this.log.warn({ reason: describe(err), users: batch.length }, 'user mappings: upsert failed, will retry')
        this.schedule(2000)
      } finally {
        this.flushing = null
      }
    })()
    return this.flushing
  }

  close (): void { if (this.timer) clearTimeout(this.timer); this.timer = null }

  private schedule (ms = 1000): void {
    if (this.timer) return
    this.timer = setTimeout(() => { this.timer = null; void this.flush() }, ms)
    this.timer.unref()
  }

  private evictClean (): void {
    for (const [id, e] of this.users) { if (!e.dirty) this.users.delete(id); if (this.users.size < MAX_ENTRIES / 2) break }
  }
}
