import { pgText } from '../lib/text.js'

// A user's groups, as Open WebUI names them: from its connection header (`X-OpenWebUI-User-Groups:
// {{USER_GROUPS}}`, comma-separated group names) or from a claim of the signed identity (an array
// of names, or one comma-separated string). One rule for both, so a group is the same id whichever
// way it arrives: each name is trimmed, control characters are removed, percent-encoding and raw
// UTF-8 are decoded, an unexpanded template (`{{USER_GROUPS}}`, any `{{...}}`) and an empty name
// are no group, duplicates go, and the list is sorted. Budgets, allowlists and reports key on
// these ids, so a list that cannot be honest (too many names, a name too long for an index entry)
// is refused with a clear error instead of being cut: a cut list could drop the one group whose
// budget should have refused the request.

/** The most groups one request may name: Open WebUI users sit in a handful; hundreds mean a misconfiguration. */
export const MAX_GROUPS = 64
/** The longest group id accepted (characters): Open WebUI's group names are short labels. */
export const MAX_GROUP_CHARS = 128
/** The longest header value read at all, before splitting (bytes of text). */
const MAX_VALUE_CHARS = MAX_GROUPS * (MAX_GROUP_CHARS + 2)

export class GroupsError extends Error {}

const TEMPLATE = /\{\{[^}]*\}\}/
const CONTROL = /[\p{Cc}\p{Cf}]/gu
const HIGH_LATIN1 = /[\u0080-\u00ff]/
const NOT_LATIN1 = /[^\u0000-\u00ff]/
const utf8 = new TextDecoder('utf-8', { fatal: true })

/**
 * Node reads header bytes as latin1: a group name the app sent as raw UTF-8 (`Équipe`) arrives
 * as `Ã\u0089quipe`. Decoded back when the bytes are valid UTF-8; left as is otherwise.
 */
function fromLatin1 (s: string): string {
  if (!HIGH_LATIN1.test(s) || NOT_LATIN1.test(s)) return s
  try { return utf8.decode(Buffer.from(s, 'latin1')) } catch { return s }
}

/** Percent-encoded UTF-8 (as Open WebUI sends the user name) decoded; anything else left as is. */
function percentDecoded (s: string): string {
  if (!s.includes('%')) return s
  try { return decodeURIComponent(s) } catch { return s }
}

/**
 * A decoded name as its group id: control and format characters (a pasted zero-width space) go,
 * Unicode's composed form (NFC) is kept, so `Réseau` typed with a combining accent is the same
 * group as `Réseau` typed with `é`, and surrounding spaces are trimmed. The admin plane reads the
 * group ids it is given (budgets, allowlists, filters) by this same rule: a budget set on one
 * spelling binds the members the header names with the other.
 */
export function canonicalGroup (decoded: string): string {
  return pgText(decoded).replace(CONTROL, '').normalize('NFC').replace(CONTROL, '').trim()
}

/** A group id given to the admin plane (already decoded once), canonical, or a string saying what is wrong. */
export function adminGroupId (decoded: string): { id: string } | { error: string } {
  const id = canonicalGroup(decoded)
  if (id === '' || TEMPLATE.test(id)) return { error: 'a group id must name a group (not empty, not a {{template}})' }
  if (id.length > MAX_GROUP_CHARS) return { error: `a group id is at most ${MAX_GROUP_CHARS} characters` }
  return { id }
}

/** One group name as it is stored, or null when it names no group. */
function one (raw: string, where: string): string | null {
  if (TEMPLATE.test(raw)) return null
  const name = canonicalGroup(percentDecoded(fromLatin1(raw)))
  if (name === '' || TEMPLATE.test(name)) return null
  if (name.length > MAX_GROUP_CHARS) throw new GroupsError(`${where}: a group name is longer than ${MAX_GROUP_CHARS} characters`)
  return name
}

function finish (names: Array<string | null>, where: string): string[] {
  const set = new Set<string>()
  for (const n of names) if (n !== null) set.add(n)
  if (set.size > MAX_GROUPS) throw new GroupsError(`${where} names ${set.size} groups; at most ${MAX_GROUPS} are accepted`)
  return [...set].sort()
}

/** The groups of a header value (comma-separated; several header lines are one list). */
export function groupsFromHeader (value: string | string[] | undefined, header: string): string[] {
  if (value === undefined) return []
  const text = Array.isArray(value) ? value.join(',') : value
  if (text.length > MAX_VALUE_CHARS) throw new GroupsError(`${header} is longer than ${MAX_VALUE_CHARS} characters`)
  return finish(text.split(',').map((s) => one(s, header)), header)
}

/** The groups of a signed claim: an array of names or one comma-separated string; anything else is refused. */
export function groupsFromClaim (value: unknown, where: string): string[] {
  if (value === undefined || value === null) return []
  if (typeof value === 'string') return groupsFromHeader(value, where)
  if (!Array.isArray(value)) throw new GroupsError(`${where} must be an array of group names or a comma-separated string`)
  if (value.length > MAX_GROUPS * 4) throw new GroupsError(`${where} names ${value.length} groups; at most ${MAX_GROUPS} are accepted`)
  return finish(value.map((v) => {
    if (typeof v !== 'string') throw new GroupsError(`${where} must hold group names (strings)`)
    return one(v, where)
  }), where)
}
