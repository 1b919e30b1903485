import type { DeepVisitor } from './json-scan.js'
import { decodeJsonString, isJsonString } from './json-text.js'

// The start of the first message of `messages`, read by the body's own scan (a DeepVisitor), so
// it costs no second pass and no parse: the task heuristic (usage/ledger/row-kind.ts) and "My usage"'s task
// check (self-service.ts) only ask whether the request is one user message whose text begins with
// `### Task:`, and which task its first line names. So what is kept is bounded whatever the
// client sends: the role when a short string, and the content's first TEXT_BYTES when a string,
// or the type and text (first TEXT_BYTES) of its first MAX_PARTS parts when an array. Nothing
// deeper than a part's members is looked at. The scan notes where these are; they are decoded
// only when asked for, from the body's bytes (which a splice of `user` leaves in place).

/** A content part as far as it is read: `type` and `text` when strings. */
export interface PartStart { type?: string, text?: string }

/** A message as far as it is read; a member that is not a string (or parts) is left out. */
export interface MessageStart { role?: string, content?: string | PartStart[] }

/** Bytes of a content string or a part's text that are decoded. */
export const TEXT_BYTES = 8 * 1024
/** Content parts that are read. */
export const MAX_PARTS = 16
/** A role or a part type longer than this is none that matters (`user`, `text`). */
const NAME_BYTES = 64

// Levels: 1 `messages`, 2 a message, 3 a message's member, 4 a content part, 5 a part's member.
const MESSAGES = 1
const MESSAGE = 2
const MEMBER = 3
const PART = 4
const PART_MEMBER = 5

/** Where a string value is: [start, end) of its quoted bytes; -1 when absent or not a string. */
interface Where { start: number, end: number }
const NONE: Where = { start: -1, end: -1 }
interface PartSpans { type: Where, text: Where }
/** The first message as spans: decoded only if it is asked for (a single message is rare). */
interface MessageSpans { role: Where, content: Where | PartSpans[] | null }

/** What one `messages` array held: how many items, and the first one's start (null: not an object). */
export class FirstMessage {
  constructor (readonly at: number, readonly items: number, private readonly spans: MessageSpans | null, private readonly bytes: Uint8Array) {}

  get message (): MessageStart | null {
    const m = this.spans
    if (m === null) return null
    const out: MessageStart = {}
    if (m.role.start >= 0) out.role = decodeJsonString(this.bytes, m.role.start, m.role.end)
    if (Array.isArray(m.content)) {
      out.content = m.content.map((p) => {
        const part: PartStart = {}
        if (p.type.start >= 0) part.type = decodeJsonString(this.bytes, p.type.start, p.type.end)
        if (p.text.start >= 0) part.text = decodeJsonString(this.bytes, p.text.start, p.text.end, TEXT_BYTES)
        return part
      })
    } else if (m.content !== null) out.content = decodeJsonString(this.bytes, m.content.start, m.content.end, TEXT_BYTES)
    return out
  }
}

export class FirstMessageReader implements DeepVisitor {
  readonly levels = PART_MEMBER
  /** Only the top-level members' opening, unless inside `messages` with a first message to read or items to count. */
  wanted = MESSAGES
  /** The current top-level member is an array named `messages`. */
  private active = false
  private at = -1
  private items = 0
  private message: MessageSpans | null = null
  /** Parts of the message member being read, when it is an array (only `content`'s are kept). */
  private parts: PartSpans[] | null = null
  /** The part being read; null when it is not an object or past MAX_PARTS. */
  private part: PartSpans | null = null

  constructor (private readonly bytes: Uint8Array) {}

  /** What the `messages` array starting at `at` held; null when it was not read (not an array). */
  result (at: number): FirstMessage | null {
    return this.active && this.at === at ? new FirstMessage(at, this.items, this.message, this.bytes) : null
  }

  open (level: number, ks: number, ke: number, kesc: boolean, start: number): void {
    const b = this.bytes
    if (level === MESSAGES) {
      this.active = ks >= 0 && b[start] === 0x5b && isJsonString(b, ks, ke, kesc, 'messages')
      this.at = start
      this.items = 0
      this.message = null
      this.wanted = this.active ? PART_MEMBER : MESSAGES
      return
    }
    // Everything below concerns the first item only.
    if (!this.active || this.items > 0) return
    if (level === MESSAGE) this.message = b[start] === 0x7b ? { role: NONE, content: null } : null
    else if (level === MEMBER) this.parts = this.message !== null && b[start] === 0x5b && isJsonString(b, ks, ke, kesc, 'content') ? [] : null
    else if (level === PART) this.part = this.parts !== null && this.parts.length < MAX_PARTS && b[start] === 0x7b ? { type: NONE, text: NONE } : null
  }

  value (level: number, ks: number, ke: number, kesc: boolean, start: number, end: number): void {
    if (!this.active) return
    if (level === MESSAGE) {
      // Past the first item only the count matters; past the second, nothing more does.
      if (++this.items >= 2) this.wanted = MESSAGES
      else this.wanted = MESSAGE
      return
    }
    if (this.items > 0) return
    const b = this.bytes
    if (level === MEMBER) {
      const m = this.message
      if (m === null) return
      // The last duplicate wins, as JSON.parse keeps it.
      if (isJsonString(b, ks, ke, kesc, 'role')) {
        m.role = b[start] === 0x22 && end - start - 2 <= NAME_BYTES ? { start, end } : NONE
      } else if (isJsonString(b, ks, ke, kesc, 'content')) {
        if (b[start] === 0x22) m.content = { start, end }
        else if (b[start] === 0x5b && this.parts !== null) m.content = this.parts
        else m.content = null
      }
      this.parts = null
      return
    }
    if (level === PART) {
      // A part that is not an object has no type or text: an empty one stands for it.
      if (this.parts !== null && this.parts.length < MAX_PARTS) this.parts.push(this.part ?? { type: NONE, text: NONE })
      this.part = null
      return
    }
    if (level === PART_MEMBER) {
      const p = this.part
      if (p === null) return
      if (isJsonString(b, ks, ke, kesc, 'type')) p.type = b[start] === 0x22 && end - start - 2 <= NAME_BYTES ? { start, end } : NONE
      else if (isJsonString(b, ks, ke, kesc, 'text')) p.text = b[start] === 0x22 ? { start, end } : NONE
    }
  }
}
