import type { DeepVisitor } from './json-scan.js'
import { decodeJsonString, isJsonString } from './json-text.js'

// The start of the first message of `messages`, read by the body's own scan (a DeepVisitor), so
// it costs no second pass and no parse: the task heuristic (usage/kind.ts) and "My usage"'s task
// check (self-service.ts) only ask whether the request is one user message whose text begins with
// `### Task:`, and which task its first line names. So what is kept is bounded whatever the
// client sends: the role when a short string, and the content's first TEXT_BYTES when a string,
// or the type and text (first TEXT_BYTES) of its first MAX_PARTS parts when an array. Nothing
// deeper than a part's members is looked at; the scan itself bounds nothing but its own memory.

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

/** What one `messages` array held: how many items, and the first one's start (null: not an object). */
export interface FirstMessage { at: number, items: number, message: MessageStart | null }

export class FirstMessageReader implements DeepVisitor {
  readonly levels = PART_MEMBER
  /** Only the top-level members' opening, unless inside `messages` with a first message to read or items to count. */
  wanted = MESSAGES
  /** The current top-level member is an array named `messages`. */
  private active = false
  private at = -1
  private items = 0
  private message: MessageStart | null = null
  /** Parts of the message member being read, when it is an array (only `content`'s are kept). */
  private parts: PartStart[] | null = null
  /** The part being read; null when it is not an object or past MAX_PARTS. */
  private part: PartStart | null = null

  constructor (private readonly bytes: Uint8Array) {}

  /** What the `messages` array starting at `at` held; null when it was not read (not an array). */
  result (at: number): FirstMessage | null {
    return this.active && this.at === at ? { at, items: this.items, message: this.message } : null
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
    if (level === MESSAGE) this.message = b[start] === 0x7b ? {} : null
    else if (level === MEMBER) this.parts = this.message !== null && b[start] === 0x5b && isJsonString(b, ks, ke, kesc, 'content') ? [] : null
    else if (level === PART) this.part = this.parts !== null && this.parts.length < MAX_PARTS && b[start] === 0x7b ? {} : null
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
        if (b[start] === 0x22 && end - start - 2 <= NAME_BYTES) m.role = decodeJsonString(b, start, end)
        else delete m.role
      } else if (isJsonString(b, ks, ke, kesc, 'content')) {
        if (b[start] === 0x22) m.content = decodeJsonString(b, start, end, TEXT_BYTES)
        else if (b[start] === 0x5b && this.parts !== null) m.content = this.parts
        else delete m.content
      }
      this.parts = null
      return
    }
    if (level === PART) {
      // A part that is not an object has no type or text: an empty one stands for it.
      if (this.parts !== null && this.parts.length < MAX_PARTS) this.parts.push(this.part ?? {})
      this.part = null
      return
    }
    if (level === PART_MEMBER) {
      const p = this.part
      if (p === null) return
      if (isJsonString(b, ks, ke, kesc, 'type')) {
        if (b[start] === 0x22 && end - start - 2 <= NAME_BYTES) p.type = decodeJsonString(b, start, end)
        else delete p.type
      } else if (isJsonString(b, ks, ke, kesc, 'text')) {
        if (b[start] === 0x22) p.text = decodeJsonString(b, start, end, TEXT_BYTES)
        else delete p.text
      }
    }
  }
}
