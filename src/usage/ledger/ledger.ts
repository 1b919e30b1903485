import { appendFileSync } from 'node:fs'
import type { Sql } from '../../db/connect.js'
import { describe } from '../../db/connect.js'
import type { Logger } from '../../lib/log.js'
import type { Journal } from './journal.js'
import { pgText } from '../../lib/text.js'
import { within } from '../../lib/deadline.js'
import { ROW_COLUMNS, toRow, type UsageRecord } from './record.js'

// Column lists as constant SQL text: postgres.js's column helper guesses its form from the
// keyword before it, which a statement with two INSERTs confuses.
const USAGE_LIST = ROW_COLUMNS.join(', ')
/** Postgres's type oid for json: the batch parameter's type (sql.json would send jsonb). */
const JSON_OID = 114
const MAPPING_LIST = 'organization_id, user_id, external_user_id, user_name, user_email, user_role, first_seen_at, last_seen_at, groups'
/** The same columns as read from the batch: a mapping from a journal line of an old version has no groups, read as none. */
const MAPPING_SELECT = MAPPING_LIST.replace('groups', `coalesce(groups, '{}')`)

// Records go journal -> memory queue -> batched INSERT ... ON CONFLICT DO NOTHING -> journal
// trimmed. The request path only calls record(), which returns at once; a client never waits
// for Postgres. While Postgres is away the queue waits and retries: it never drops a record.

export interface LedgerOptions {
  batchSize: number
  flushMs: number
  /** Past this many queued records, new ones stay only in the journal until there is room. */
  maxInMemory?: number
  /** Where a record Postgres refuses as data (isDataError) is set aside for an operator. */
  rejectedPath?: string
  /** Inserts in flight at once (each holds a connection); 3 unless the pool is smaller. */
  parallelBatches?: number
  /** Records waiting and no commit for this long: logged at error level, again every this long. */
  stalledAfterMs?: number
  /** The clock of the stall check (tests move it). */
  now?: () => number
}

/** What the ledger holds back, for /metrics and the usage page: read from memory, never from Postgres. */
export interface Backlog {
  /** Records accepted and not yet committed (memory, inserts in flight, journal-only). */
  records: number
  /** Seconds the oldest of them has waited; 0 when none waits. */
  oldestSeconds: number
  /** Seconds records have waited with no commit at all; 0 while the ledger commits. */
  stalledSeconds: number
  /** Why the last insert failed, while inserts fail; null once one succeeds. */
  lastError: string | null
}

const STALLED_AFTER_MS = 60_000

const MAX_IN_MEMORY = 20_000
// Three batches at once keep Postgres busy on both cores while this process builds the next one
// (2,000-row batches: 19.6-21.0k records/s with two in flight, 21.2-23.4k with three; BENCHMARKS.md).
const PARALLEL_BATCHES = 3

export class Ledger {
  private queue: UsageRecord[] = []
  /** Records on disk but not in memory (ids only): an outage is bounded by disk, not memory. */
  private readonly spilled = new Set<string>()
  private timer: NodeJS.Timeout | null = null
  private flushing: Promise<void> | null = null
  private failures = 0
  private closed = false
  private inserting = 0
  private refusedAlike = 0
  /** Accepted-at time of every record waiting, oldest first (a Map keeps insertion order). */
  private readonly waitingSince = new Map<string, number>()
  private lastCommitAt = 0
  private lastError: string | null = null
  private lastStallLogAt = -Infinity
  private readonly watchdog: NodeJS.Timeout
  written = 0
  rejected = 0
  /** Batches Postgres refused whole and that were then written row by row. */
  isolated = 0

  constructor (
    private readonly sql: Sql,
    private readonly journal: Journal | null,
    private readonly log: Logger,
    private readonly opts: LedgerOptions,
  ) {
    this.lastCommitAt = this.now()
    this.watchdog = setInterval(() => this.checkStalled(), Math.max(10, Math.min(5_000, this.stalledAfterMs / 4)))
    this.watchdog.unref()
  }

  private get cap (): number { return this.opts.maxInMemory ?? MAX_IN_MEMORY }
  private get stalledAfterMs (): number { return this.opts.stalledAfterMs ?? STALLED_AFTER_MS }
  private now (): number { return this.opts.now?.() ?? Date.now() }

  /** The backlog as /metrics and the usage page show it. */
  backlog (): Backlog {
    const now = this.now()
    const first = this.waitingSince.values().next()
    const oldest = first.done === true ? now : first.value
    const records = this.depth
    const stalledMs = records === 0 ? 0 : now - Math.max(this.lastCommitAt, oldest)
    return { records, oldestSeconds: records === 0 ? 0 : (now - oldest) / 1000, stalledSeconds: Math.max(0, stalledMs) / 1000, lastError: this.lastError }
  }

  /**
   * Records waiting and nothing committed for a minute: billing, budgets and the usage page are
   * blind, so it is said at error level, with why and how much waits, once a minute until a
   * commit succeeds. (Failures come with a reason; an insert that never answers hits its deadline.)
   */
  checkStalled (): void {
    const b = this.backlog()
    const now = this.now()
    if (b.stalledSeconds * 1000 < this.stalledAfterMs || now - this.lastStallLogAt < this.stalledAfterMs) return
    this.lastStallLogAt = now
    this.log.error({ reason: b.lastError ?? 'no insert finished', backlog: b.records, oldestWaitingSeconds: Math.round(b.oldestSeconds), stalledSeconds: Math.round(b.stalledSeconds) },
      'ledger: cannot commit to postgres; records wait in the journal and are written once it answers')
  }

  /** A request is about to go upstream: journal it so a crash cannot lose what it may cost. */
  intent (r: UsageRecord): void { this.journal?.intent(r) }

  /** The intent's request was not sent after all: no row is to be made of it. */
  withdraw (eventId: string): void { this.journal?.withdraw(eventId) }

  /** A request's generation id is known: journal it so a crash cannot lose it. */
  pending (r: UsageRecord): void { this.journal?.pending(r) }

  /** Accepts a finished record. Never throws, never waits. */
  record (r: UsageRecord, journaled = false): void {
    if (!this.waitingSince.has(r.eventId)) this.waitingSince.set(r.eventId, this.now())
    if (this.spilled.size > 0 || this.queue.length >= this.cap) {
      // Past the memory cap only the journal would keep it: written now, and let out of memory
      // only if that worked. A record that is not on disk is never let out of memory.
      if (journaled || (this.journal?.appendNow(r) ?? false)) this.spilled.add(r.eventId)
      else this.queue.push(r)
    } else {
      if (!journaled) this.journal?.append(r) // on disk by the end of this event-loop turn
      this.queue.push(r)
    }
    this.schedule(this.queue.length >= this.opts.batchSize ? 0 : this.opts.flushMs)
  }

  /** Runs `then` once the records accepted so far are on disk (or their write failed). */
  afterJournal (then: () => void): void {
    if (this.journal) this.journal.afterWrite(then)
    else then()
  }

  get inMemory (): number { return this.queue.length + this.inserting }

  /** Records waiting for Postgres, in memory, being inserted, and spilled to the journal. */
  get depth (): number { return this.queue.length + this.inserting + this.spilled.size }

  /**
   * Writes everything queued; resolves when the queue is empty or the deadline passed, even while
   * an insert is still waiting for a Postgres that does not answer (a partition keeps the
   * connection open: the insert alone would wait for TCP keepalive, many minutes).
   */
  async drain (timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs
    while (this.depth > 0 || this.flushing) {
      const left = deadline - Date.now()
      if (left < 0) return false
      if (!await within((this.flushing ?? this.flush()).then(() => true), left, () => false)) return false
      if (this.depth > 0 && this.failures > 0) await new Promise((r) => setTimeout(r, 100))
    }
    return true
  }

  close (): void {
    this.closed = true
    clearInterval(this.watchdog)
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
  }

  private schedule (ms: number): void {
    if (this.closed || this.flushing) return
    if (this.timer) {
      if (ms > 0) return
      clearTimeout(this.timer)
    }
    this.timer = setTimeout(() => { this.timer = null; void this.flush() }, ms)
  }

  private flush (): Promise<void> {
    if (this.flushing) return this.flushing
    if (this.depth === 0) return Promise.resolve()
    const flushing = this.refill().then(() => {
      // Order does not matter to an idempotent insert.
      const batches: UsageRecord[][] = []
      for (let i = 0; i < (this.opts.parallelBatches ?? PARALLEL_BATCHES) && this.queue.length > 0; i++) batches.push(this.queue.splice(0, this.opts.batchSize))
      return Promise.all(batches.map((b) => this.writeBatch(b))).then(() => undefined)
    }).finally(() => {
      this.flushing = null
      if (this.depth > 0) {
        // Back off while Postgres fails: 100 ms doubling to 1 s, so recovery is noticed within a second.
        // Otherwise a partial batch waits flushMs like the first: back-to-back small inserts cost
        // Postgres more per row, on the cores the proxy shares with it.
        const wait = this.failures === 0 ? (this.queue.length >= this.opts.batchSize ? 0 : this.opts.flushMs) : Math.min(100 * 2 ** (this.failures - 1), 1000)
        this.schedule(wait)
      }
    })
    this.flushing = flushing
    return flushing
  }

  /** Brings spilled records back from the journal, a segment at a time, once there is room. */
  private async refill (): Promise<void> {
    if (this.spilled.size === 0 || !this.journal || this.queue.length > this.cap / 2) return
    const room = this.cap - this.queue.length
    let taken = 0
    for await (const r of this.journal.finals(this.spilled)) {
      this.spilled.delete(r.eventId)
      this.queue.push(r)
      if (++taken >= room) break
    }
  }

  private async writeBatch (batch: UsageRecord[]): Promise<void> {
    this.inserting += batch.length
    try {
      await this.insert(batch)
      this.done(batch)
      if (this.failures > 0) this.log.info({ afterFailures: this.failures, queued: this.depth }, 'ledger: postgres writes resumed')
      this.failures = 0
      this.lastError = null
    } catch (err) {
      if (isDataError(err)) {
        try { await this.isolate(batch); return } catch (again) { err = again }
      }
      this.failures++
      this.lastError = describe(err)
      this.queue.unshift(...batch) // back to the front, to be tried again
      if (this.failures === 1 || this.failures % 20 === 0) {
        this.log.warn({ reason: describe(err), queued: this.depth, failures: this.failures }, 'ledger: insert failed, will retry')
      }
    } finally {
      this.inserting -= batch.length
    }
  }

  /**
   * THE batch write: usage rows and the user mappings they carry, in one statement, so a mapping
   * commits exactly when its usage does (and both come back from the journal after a crash).
   * One statement text whatever the batch size: the rows travel as one JSON parameter. A
   * multi-row VALUES list would be a new statement (and a new server-side prepare) for every
   * batch size. Type json, not jsonb: each value goes from its JSON text straight to its
   * column's input function (exact: a cost is text to numeric_in), with no jsonb built and
   * key-sorted first, which cost Postgres about 6 of its 38 µs per row (BENCHMARKS.md).
   */
  private async insert (rows: UsageRecord[]): Promise<void> {
    await this.sql`with usage as (
        insert into usage_events (${this.sql.unsafe(USAGE_LIST)})
        select ${this.sql.unsafe(USAGE_LIST)} from json_populate_recordset(null::usage_events, ${this.sql.typed(rows.map(toRow) as never, JSON_OID)})
        on conflict do nothing)
      insert into user_mappings (${this.sql.unsafe(MAPPING_LIST)})
      select ${this.sql.unsafe(MAPPING_SELECT)} from json_populate_recordset(null::user_mappings, ${this.sql.typed(mappingRows(rows) as never, JSON_OID)})
      on conflict (organization_id, user_id) do update set
        user_name = coalesce(excluded.user_name, user_mappings.user_name),
        user_email = coalesce(excluded.user_email, user_mappings.user_email),
        user_role = coalesce(excluded.user_role, user_mappings.user_role),
        first_seen_at = least(user_mappings.first_seen_at, excluded.first_seen_at),
        last_seen_at = greatest(user_mappings.last_seen_at, excluded.last_seen_at),
        -- the latest groups: a batch replayed late does not bring back groups a user has left
        groups = case when excluded.last_seen_at >= user_mappings.last_seen_at then excluded.groups else user_mappings.groups end`
  }

  private done (batch: UsageRecord[]): void {
    for (const r of batch) { this.journal?.committed(r.eventId); this.waitingSince.delete(r.eventId) }
    this.written += batch.length
    this.lastCommitAt = this.now()
  }

  /**
   * Postgres refused the batch's data itself: retrying it whole would block every record behind
   * it forever. Insert one by one and set aside the rows it refuses, with the reason, in a file
   * an operator can read and replay; the rest go in.
   */
  private async isolate (batch: UsageRecord[]): Promise<void> {
    this.isolated++
    const refused: Array<{ r: UsageRecord, err: unknown }> = []
    for (const r of batch) {
      try {
        await this.insert([r])
      } catch (err) {
        if (!isDataError(err) || !this.opts.rejectedPath) throw err
        refused.push({ r, err })
      }
    }
    // Every row refused alike is more likely the statement's fault (or the schema's) than the
    // data's: retry rather than set a whole batch aside, but only a few times, so a batch that
    // really is all bad data cannot wedge the queue.
    if (batch.length > 1 && refused.length === batch.length && ++this.refusedAlike < 3) throw refused[0].err
    this.refusedAlike = 0
    // One append for all of them, so a failed write is retried whole instead of after some rows
    // went out one by one and would be set aside twice.
    if (refused.length > 0) appendFileSync(this.opts.rejectedPath!, refused.map(({ r, err }) => JSON.stringify({ reason: describe(err), record: r }) + '\n').join(''))
    for (const { r, err } of refused) {
      this.rejected++
      this.log.error({ eventId: r.eventId, generationId: r.generationId, reason: describe(err), file: this.opts.rejectedPath }, 'ledger: record refused by postgres, set aside')
    }
    this.done(batch)
  }
}

/**
 * The mappings a batch carries, one per user: ON CONFLICT DO UPDATE may touch a row only once per
 * statement (SQLSTATE 21000), so two records of one user in a batch are merged here. Sorted by
 * user, so two batches in flight lock user_mappings rows in the same order and never deadlock.
 */
function mappingRows (batch: UsageRecord[]): Array<Record<string, unknown>> {
  const byUser = new Map<string, Record<string, unknown> & { first_seen_at: string, last_seen_at: string }>()
  for (const r of batch) {
    const m = r.mapping
    if (!m) continue
    const userId = pgText(m.userId)
    const row = byUser.get(userId)
    if (!row) {
      byUser.set(userId, {
        organization_id: r.organizationId, user_id: userId, external_user_id: pgText(r.externalUserId),
        user_name: pgText(m.name), user_email: pgText(m.email), user_role: pgText(m.role), first_seen_at: r.createdAt, last_seen_at: r.createdAt,
        groups: m.groups ?? null,
      })
      continue
    }
    if (r.createdAt >= row.last_seen_at) row.groups = m.groups ?? null
    row.user_name = pgText(m.name) ?? row.user_name
    row.user_email = pgText(m.email) ?? row.user_email
    row.user_role = pgText(m.role) ?? row.user_role
    if (r.createdAt < row.first_seen_at) row.first_seen_at = r.createdAt
    if (r.createdAt > row.last_seen_at) row.last_seen_at = r.createdAt
  }
  return [...byUser.values()].sort((a, b) => (a.user_id as string) < (b.user_id as string) ? -1 : 1)
}

/**
 * Postgres refused the data itself (class 22), one statement touched a row twice (21000), or a
 * value too large for an index entry (54000: a key past btree's 2704 bytes): retrying never helps.
 */
function isDataError (err: unknown): boolean {
  const state = sqlState(err)
  return state.startsWith('22') || state === '21000' || state === '54000'
}

function sqlState (err: unknown): string {
  const code = (err as { code?: unknown })?.code
  return typeof code === 'string' ? code : ''
}
