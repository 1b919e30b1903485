import type { Sql } from '../db/connect.js'
import type { Logger } from '../lib/log.js'
import { describe } from '../db/connect.js'
import { hashSecret, wellFormed } from './secret.js'
import { keyByHash, liveKeys, touchKeys, type ApiKey } from './store.js'

// Every replica's copy of the organization's live keys, so a request is authenticated without a
// database round trip: the SHA-256 of what it presents, looked up in a map. The copy is re-read
// whole every API_KEYS_REFRESH_MS, so a key revoked on any replica stops working on this one
// within that interval (plus the time of one query). A key this replica does not know yet (made
// on another replica since the last read) is looked up once by its hash; what is found to be
// unknown, revoked or expired is remembered, since a key never comes back from either state.
// When keys were used is gathered here and written once per interval, never per request.

export type KeyRefusal = 'unknown' | 'revoked' | 'expired' | 'unavailable'
export type KeyCheck = { key: ApiKey } | { refused: KeyRefusal }

export interface KeyRingOptions {
  /** Reads: the refresh and the lookups (the admissions' pool: a busy main pool does not delay a revocation). */
  readSql: Sql
  /** last_used_at writes. */
  writeSql: Sql
  organizationId: string
  log: Logger
  /** API_KEYS_REFRESH_MS. */
  refreshMs: number
  /**
   * Keys last read longer ago than this are not trusted: key requests are answered 503 until a
   * read succeeds (BUDGET_FAIL_MODE=closed). Null: the last keys read keep serving (open).
   */
  staleAfterMs: number | null
  now?: () => number
}

/** Lookups of unfamiliar keys in flight at once; past it a request is told to retry, so a flood of made-up keys cannot occupy the pool. */
const MAX_LOOKUPS = 8
/** Hashes remembered as not usable; past it the older half is forgotten (and looked up again if presented). */
const MAX_REFUSED = 10_000

export class KeyRing {
  private live = new Map<string, ApiKey>()
  private readonly refused = new Map<string, Exclude<KeyRefusal, 'unavailable'>>()
  /** Revoked through this replica's admin API: refused at once, whatever a read in flight brings back. */
  private readonly revokedHere = new Set<string>()
  private readonly lookups = new Map<string, Promise<KeyCheck>>()
  private used = new Map<string, number>()
  private timer: NodeJS.Timeout | null = null
  private closed = false
  private flushing: Promise<void> | null = null
  private failures = 0
  private lookupFailures = 0
  /** When the keys were last read whole (epoch ms); 0: never. */
  readAt = 0
  private readonly now: () => number

  constructor (private readonly o: KeyRingOptions) {
    this.now = o.now ?? Date.now
  }

  /** The first read (boot waits for it), then one every refreshMs. */
  async start (): Promise<void> {
    await this.refresh()
    this.schedule()
  }

  /**
   * Whether a presented credential is a usable key of this organization. Synchronous for a key
   * this replica knows (every request but the first of a new key); a promise when it must ask.
   */
  check (secret: string): KeyCheck | Promise<KeyCheck> {
    if (!wellFormed(secret)) return { refused: 'unknown' }
    const hash = hashSecret(secret)
    const key = this.live.get(hash)
    if (key) return this.admit(key)
    const known = this.refused.get(hash)
    if (known) return { refused: known }
    return this.lookup(hash)
  }

  /** A key this replica's admin API just made: usable here at once. */
  added (hash: string, key: ApiKey): void {
    this.live.set(hash, key)
  }

  /** A key this replica's admin API just revoked: refused here at once, on the others within refreshMs. */
  revoked (id: string): void {
    this.revokedHere.add(id)
  }

  /**
   * A user was forgotten through this replica: their keys now bill the pseudonym in api_keys.
   * Dropped from the copy, so the next request reads the key again instead of billing the erased
   * id until the next refresh (other replicas: within refreshMs).
   */
  userForgotten (userId: string): void {
    for (const [hash, key] of this.live) if (key.userId === userId) this.live.delete(hash)
  }

  /** Writes what is left of last_used_at (after a write in flight) and stops the refresh. */
  async close (): Promise<void> {
    this.closed = true
    if (this.timer) clearTimeout(this.timer)
    await this.flushing
    await this.flushUsed()
  }

  private admit (key: ApiKey): KeyCheck {
    const now = this.now()
    if (this.revokedHere.has(key.id)) return { refused: 'revoked' }
    if (key.expiresAt !== null && key.expiresAt <= now) return { refused: 'expired' }
    if (this.o.staleAfterMs !== null && now - this.readAt > this.o.staleAfterMs) return { refused: 'unavailable' }
    this.used.set(key.id, now)
    return { key }
  }

  private lookup (hash: string): KeyCheck | Promise<KeyCheck> {
    const pending = this.lookups.get(hash)
    if (pending) return pending
    if (this.lookups.size >= MAX_LOOKUPS) return { refused: 'unavailable' }
    const p = keyByHash(this.o.readSql, this.o.organizationId, hash).then((found): KeyCheck => {
      if ('key' in found) {
        this.live.set(hash, found.key)
        return this.admit(found.key)
      }
      this.remember(hash, found.refused)
      return found
    }, (err: unknown): KeyCheck => {
      // A flood of unfamiliar keys during an outage is one log line per hundred, not one each.
      if (this.lookupFailures++ % 100 === 0) this.o.log.warn({ reason: describe(err), failures: this.lookupFailures }, 'api keys: could not look up a key; answered 503')
      return { refused: 'unavailable' }
    }).finally(() => this.lookups.delete(hash))
    this.lookups.set(hash, p)
    return p
  }

  private remember (hash: string, why: Exclude<KeyRefusal, 'unavailable'>): void {
    if (this.refused.size >= MAX_REFUSED) {
      let drop = MAX_REFUSED / 2
      for (const h of this.refused.keys()) { if (drop-- <= 0) break; this.refused.delete(h) }
    }
    this.refused.set(hash, why)
  }

  private schedule (): void {
    if (this.closed) return
    this.timer = setTimeout(() => {
      void this.flushUsed()
      void this.refresh().finally(() => this.schedule())
    }, this.o.refreshMs)
    this.timer.unref()
  }

  /** Re-reads the live keys; on failure the last ones read stay (see staleAfterMs). */
  private async refresh (): Promise<void> {
    const started = this.now()
    try {
      this.live = await liveKeys(this.o.readSql, this.o.organizationId)
      this.readAt = started
      if (this.failures > 0) this.o.log.info({ failures: this.failures }, 'api keys: read again')
      this.failures = 0
    } catch (err) {
      this.failures++
      if (this.failures === 1 || this.failures % 30 === 0) {
        this.o.log.warn({ reason: describe(err), failures: this.failures, staleAfterMs: this.o.staleAfterMs }, 'api keys: could not re-read the keys; serving the ones read last')
      }
    }
  }

  /** One write at a time: a slow one is not overtaken (nor is the refresh held up by it). */
  private flushUsed (): Promise<void> {
    if (this.used.size === 0 || this.flushing) return Promise.resolve()
    const used = this.used
    this.used = new Map()
    this.flushing = touchKeys(this.o.writeSql, this.o.organizationId, used).catch(() => {
      // Kept for the next tick (a later use of the same key wins).
      for (const [id, at] of used) if (!this.used.has(id)) this.used.set(id, at)
    }).finally(() => { this.flushing = null })
    return this.flushing
  }
}
