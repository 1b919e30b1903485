import { closeSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, unlinkSync, writeSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from '../../lib/log.js'
import type { UsageRecord } from './record.js'

// The local journal: a usage record is on disk before its response ends, and leaves the disk
// only after its row is committed. Lines are grouped per event-loop turn: every line
// appended during one turn goes out in one write(2) to an O_APPEND file at the end of that turn
// (setImmediate), or sooner when someone needs it on disk now (flush). Once written, a line
// survives a SIGKILL (the kernel has it); a torn last line after a power cut is skipped and
// reported at replay, never fatal. docs/durability.md states what this promises a client.
//
// Segments: journal/seg-<seq>.jsonl, about 1 MB each. A segment is deleted when every record it
// holds is committed. Four kinds of line, all keyed by the record's eventId; for one eventId a
// later kind supersedes an earlier one (final > pending > intent), whatever segment holds it:
//   {"k":"i","r":{...}}  intent: the request as admitted (estimate included), before it goes upstream
//   {"k":"p","r":{...}}  pending: the generation id is known, the request is still running
//   {"k":"r","r":{...}}  final: the record as it will be inserted
//   {"k":"x","r":{"eventId":...}}  withdrawn: an intent whose request was never sent

export interface Replay {
  finals: UsageRecord[]
  /** Generation id known, no outcome: reconcile through /generation. */
  pendings: UsageRecord[]
  /** Sent upstream (or about to be) and never heard of again: no generation id, no outcome. */
  intents: UsageRecord[]
  tornLines: number
  segments: number
}

type LineKind = 'i' | 'p' | 'r' | 'x'
const KINDS = new Set<string>(['i', 'p', 'r', 'x'])

const SEGMENT_BYTES = 1024 * 1024

interface Segment { seq: number, path: string, outstanding: number, sealed: boolean }

export class Journal {
  private current: Segment | null = null
  private fd = -1
  private size = 0
  private readonly segments = new Map<number, Segment>()
  /** eventId -> segments holding lines that stay outstanding until its row is committed */
  private readonly holders = new Map<string, number[]>()
  private nextSeq = 1
  /** Lines appended this turn, not yet written, and the records they belong to. */
  private lines: string[] = []
  private lineIds: string[] = []
  private scheduled: NodeJS.Immediate | null = null
  /** Called once the lines appended before them are written (or failed). */
  private waiters: Array<() => void> = []
  /** Records whose lines could not be written, counted once per failed write (the ledger keeps those in memory). */
  failures = 0

  constructor (private readonly dir: string, private readonly log: Logger, private readonly segmentBytes = SEGMENT_BYTES) {
    mkdirSync(dir, { recursive: true })
  }

  /**
   * Adopts the segments an earlier process left, in place: nothing is copied, so a full disk at
   * boot cannot lose what is already on it. Every record found counts as outstanding until its
   * row is committed again (the insert is idempotent). Call once, before the first append.
   */
  replay (): Replay {
    const files = readdirSync(this.dir).filter((f) => /^seg-\d+\.jsonl$/.test(f)).sort()
    const finals = new Map<string, UsageRecord>()
    const pendings = new Map<string, UsageRecord>()
    const intents = new Map<string, UsageRecord>()
    const withdrawn = new Set<string>()
    let tornLines = 0
    for (const f of files) {
      const seq = Number(f.slice(4, -6))
      this.nextSeq = Math.max(this.nextSeq, seq + 1)
      const seg: Segment = { seq, path: join(this.dir, f), outstanding: 0, sealed: true }
      this.segments.set(seq, seg)
      for (const line of readFileSync(seg.path, 'utf8').split('\n')) {
        if (line === '') continue
        let entry: { k?: string, r?: UsageRecord }
        try { entry = JSON.parse(line) } catch { tornLines++; continue }
        const r = entry.r
        if (!r || typeof r.eventId !== 'string' || !KINDS.has(entry.k ?? '')) { tornLines++; continue }
        if (entry.k === 'r') finals.set(r.eventId, r)
        else if (entry.k === 'p') pendings.set(r.eventId, r)
        else if (entry.k === 'i') intents.set(r.eventId, r)
        else withdrawn.add(r.eventId)
        this.hold(r.eventId, seg)
      }
      this.maybeDelete(seg)
    }
    for (const id of finals.keys()) { pendings.delete(id); intents.delete(id) }
    for (const id of pendings.keys()) intents.delete(id)
    // A withdrawn request never went out: nothing of it becomes a row, and its lines are let go now.
    for (const id of withdrawn) { intents.delete(id); if (!finals.has(id) && !pendings.has(id)) this.committed(id) }
    if (tornLines > 0) this.log.warn({ tornLines }, 'journal: skipped unreadable lines (a write cut short by a crash)')
    return { finals: [...finals.values()], pendings: [...pendings.values()], intents: [...intents.values()], tornLines, segments: files.length }
  }

  /**
   * The request as admitted, before it goes upstream: after a crash it becomes an 'interrupted'
   * row even if its generation id was never learned. Written at the end of this turn: dispatch
   * waits for it (afterWrite).
   */
  intent (r: UsageRecord): void { this.add('i', r) }

  /**
   * The intent's request was not sent after all (its client left while the line was written):
   * written now, and the record's lines are let go, so no row is made of it at the next start.
   */
  withdraw (eventId: string): void {
    this.lines.push(JSON.stringify({ k: 'x', r: { eventId } }) + '\n')
    this.lineIds.push(eventId)
    this.committed(eventId)
  }

  /** The request is under way and its generation id is known: enough to reconcile it after a crash. */
  pending (r: UsageRecord): void { this.add('p', r) }

  /** The final record, as it is queued for Postgres; written at the end of this turn. */
  append (r: UsageRecord): void { this.add('r', r) }

  /** The final record, written now with whatever else this turn appended. False when it could not be. */
  appendNow (r: UsageRecord): boolean {
    this.add('r', r)
    return this.flush()
  }

  /** Runs `then` once every line appended so far is written (or failed): at once if none waits. */
  afterWrite (then: () => void): void {
    if (this.lines.length === 0) then()
    else this.waiters.push(then)
  }

  /**
   * Writes every line appended since the last flush in one write(2). False when they could not be
   * written: then none of them is (a cut-short write is taken back), each counts as a failure, and
   * the records stay only in the ledger's memory.
   */
  flush (): boolean {
    if (this.scheduled) { clearImmediate(this.scheduled); this.scheduled = null }
    if (this.lines.length === 0) return true
    const ids = this.lineIds
    const data = Buffer.from(this.lines.length === 1 ? this.lines[0] : this.lines.join(''))
    this.lines = []
    this.lineIds = []
    const ok = this.write(data, ids)
    const waiters = this.waiters
    this.waiters = []
    for (const then of waiters) {
      try { then() } catch (err) { this.log.error({ err: (err as Error).message }, 'journal: a callback after the write failed') }
    }
    return ok
  }

  /** Its row is committed: the journal lets this record's lines go. */
  committed (eventId: string): void {
    if (this.lines.length > 0) this.flush() // its lines must be counted before they are let go
    const seqs = this.holders.get(eventId)
    if (!seqs) return
    this.holders.delete(eventId)
    for (const seq of seqs) {
      const seg = this.segments.get(seq)
      if (!seg) continue
      seg.outstanding--
      this.maybeDelete(seg)
    }
  }

  /**
   * Final records still on disk, oldest first, for a ledger that let them out of memory. One
   * segment is read at a time, asynchronously, so a large backlog does not stall the proxy.
   */
  async * finals (wanted: Set<string>): AsyncGenerator<UsageRecord> {
    for (const seq of [...this.segments.keys()].sort((a, b) => a - b)) {
      const seg = this.segments.get(seq)
      if (!seg || seg.outstanding === 0) continue
      let text: string
      try { text = await readFile(seg.path, 'utf8') } catch { continue }
      for (const line of text.split('\n')) {
        if (!line.startsWith('{"k":"r"')) continue
        try {
          const r = (JSON.parse(line) as { r: UsageRecord }).r
          if (wanted.has(r.eventId)) yield r
        } catch { /* torn line */ }
      }
    }
  }

  /** Records in the journal not yet committed (a record still buffered this turn counts). */
  get backlog (): number {
    if (this.lines.length === 0) return this.holders.size
    return this.holders.size + new Set(this.lineIds.filter((id) => !this.holders.has(id))).size
  }

  close (): void {
    this.flush()
    if (this.fd !== -1) { try { fsyncSync(this.fd) } catch {} closeSync(this.fd); this.fd = -1 }
    if (this.current) { this.current.sealed = true; this.maybeDelete(this.current); this.current = null }
  }

  private add (kind: LineKind, r: UsageRecord): void {
    this.lines.push(JSON.stringify({ k: kind, r }) + '\n')
    this.lineIds.push(r.eventId)
    this.scheduled ??= setImmediate(() => { this.scheduled = null; this.flush() })
  }

  private write (data: Buffer, ids: string[]): boolean {
    let seg: Segment
    try {
      seg = this.segment()
    } catch (err) {
      return this.failed(err, ids)
    }
    let written = 0
    try {
      // write(2) may take part of the data on a nearly full disk: finish it or take it back.
      while (written < data.length) written += writeSync(this.fd, data, written)
    } catch (err) {
      try { if (written > 0) ftruncateSync(this.fd, this.size) } catch { /* the next replay skips the torn line */ }
      return this.failed(err, ids)
    }
    this.size += data.length
    for (const id of ids) this.hold(id, seg)
    return true
  }

  private failed (err: unknown, ids: string[]): false {
    // Disk full or read-only: the records still go to Postgres from memory, only crash
    // safety is lost for them. Proxying never stops for the journal.
    this.failures += ids.length === 1 ? 1 : new Set(ids).size // a pending and a final line of one record count once
    this.log.error({ err: (err as Error).message, records: ids.length, eventId: ids[0] }, 'journal: append failed; record kept in memory only')
    return false
  }

  private hold (eventId: string, seg: Segment): void {
    seg.outstanding++
    const seqs = this.holders.get(eventId)
    if (seqs) seqs.push(seg.seq)
    else this.holders.set(eventId, [seg.seq])
  }

  private segment (): Segment {
    if (this.current && this.size < this.segmentBytes) return this.current
    if (this.current) {
      closeSync(this.fd)
      this.fd = -1
      this.current.sealed = true
      this.maybeDelete(this.current)
      this.current = null
    }
    const seq = this.nextSeq++
    const path = join(this.dir, `seg-${String(seq).padStart(12, '0')}.jsonl`)
    this.fd = openSync(path, 'a')
    this.size = statSync(path).size
    const seg: Segment = { seq, path, outstanding: 0, sealed: false }
    this.segments.set(seq, seg)
    this.current = seg
    return seg
  }

  private maybeDelete (seg: Segment): void {
    if (!seg.sealed || seg.outstanding > 0) return
    this.segments.delete(seg.seq)
    try { unlinkSync(seg.path) } catch { /* already gone */ }
  }
}
