import type { IncomingHttpHeaders } from 'node:http'
import type { Logger } from '../lib/log.js'
import { JwtError, verifyJwt } from './jwt.js'
import { MAX_USER_ID_CHARS, normalizeId } from './user-id.js'
import { GroupsError, groupsFromClaim, groupsFromHeader } from './groups.js'

// Who is asking, in order of trust: a signed JWT from the app; the plain headers the app
// forwards (only while no JWT secret is configured: anyone who reaches the sidecar can forge
// them); the OpenAI-style `user` field of the body; else the organization itself. Every id and
// claim comes back normalized (user-id.ts): an id that names nobody counts as not sent.
//
// Groups follow the same trust: the signed claim when the JWT carries one; the plain group header
// only without a JWT secret, or when the operator says the header is set by the app alone
// (TRUST_GROUP_HEADER: Open WebUI's JWT carries no groups today, so the header is the only source).
// A request made with an API key of the sidecar's own (keyIdentity) is whoever the key says, whatever it sends.

/** The API key a request was made with, as the spend controls read it. */
export interface IdentityKey { id: string, name: string, models: string[] | null, rpm: number | null }

export interface Identity {
  userId: string | null
  name: string | null
  email: string | null
  role: string | null
  chatId: string | null
  source: 'jwt' | 'headers' | 'body' | 'organization' | 'key'
  /** The user's groups: sorted, duplicate-free, normalized group ids (groups.ts); [] for none. */
  groups: string[]
  /** The API key the request was made with; null for PROXY_API_KEY (or none). */
  apiKey: IdentityKey | null
}

/** What keyIdentity() needs of a key (src/keys/store.ts ApiKey). */
export interface KeyHolder extends IdentityKey { userId: string | null, groups: string[] }

/** The user id a key without a user of its own is billed as: the key itself. */
export function keyUserId (keyId: string): string {
  return `key:${keyId}`
}

export interface IdentityOptions {
  userIdHeader: string
  userNameHeader: string
  userEmailHeader: string
  userRoleHeader: string
  chatIdHeader: string
  jwtHeader: string
  jwtSecret: string | undefined
  trustBodyUser: boolean
  /** USER_GROUPS_HEADER: comma-separated group names (Open WebUI's `{{USER_GROUPS}}`). */
  groupsHeader?: string
  /** USER_GROUPS_CLAIM: the claim of the signed identity that holds the groups. */
  groupsClaim?: string
  /** TRUST_GROUP_HEADER: the plain group header counts even with a JWT secret set. */
  trustGroupHeader?: boolean
  /** REQUIRE_USER_IDENTITY: a request that names no user is refused rather than billed to the organization. */
  requireUserIdentity?: boolean
  /** Called when plain identity headers arrive although a JWT secret is set (they are ignored). */
  onIgnoredHeaders?: () => void
  /** Tests only: where the request's groups come from, in place of the header and the claim. */
  groupsOf?: (headers: IncomingHttpHeaders) => string[]
}

export class IdentityError extends Error {}
export { GroupsError }

export const DEFAULT_GROUPS_HEADER = 'x-openwebui-user-groups'
export const DEFAULT_GROUPS_CLAIM = 'groups'

/** The headers that carry identity: they stay with the sidecar and never travel upstream. */
export function identityHeaders (o: IdentityOptions): Set<string> {
  return new Set([o.userIdHeader, o.userNameHeader, o.userEmailHeader, o.userRoleHeader, o.chatIdHeader, o.jwtHeader, o.groupsHeader ?? DEFAULT_GROUPS_HEADER])
}

const one = (v: string | string[] | undefined): string | null => {
  const s = Array.isArray(v) ? v[0] : v
  return s === undefined || s === '' ? null : s
}

/** Open WebUI percent-encodes the user name as UTF-8 (spaces left as is). */
export function decodeName (raw: string | null): string | null {
  if (raw === null) return null
  try { return decodeURIComponent(raw) } catch { return raw }
}

/**
 * Who is asking, with their groups. Throws IdentityError (401: the identity itself is bad) or
 * GroupsError (400: the groups named cannot be honoured).
 */
export function identify (headers: IncomingHttpHeaders, bodyUser: unknown, o: IdentityOptions): Identity {
  const who = person(headers, bodyUser, o)
  if (o.groupsOf) return { ...who, groups: o.groupsOf(headers) }
  if (who.groups !== null) return who as Identity
  const header = o.groupsHeader ?? DEFAULT_GROUPS_HEADER
  const trusted = !o.jwtSecret || o.trustGroupHeader === true
  return { ...who, groups: trusted ? groupsFromHeader(headers[header], header) : [] }
}

/** The person, with groups null unless a signed claim named them (the header is read after). */
function person (headers: IncomingHttpHeaders, bodyUser: unknown, o: IdentityOptions): Omit<Identity, 'groups'> & { groups: string[] | null } {
  const chatId = one(headers[o.chatIdHeader])
  /** Where an id was sent that names nobody, for the refusal's message. */
  let empty: string | null = null
  if (o.jwtSecret) {
    if (o.onIgnoredHeaders && (headers[o.userIdHeader] !== undefined || headers[o.userNameHeader] !== undefined ||
      headers[o.userEmailHeader] !== undefined || headers[o.userRoleHeader] !== undefined)) o.onIgnoredHeaders()
    const token = one(headers[o.jwtHeader])
    if (token !== null) {
      let c
      try {
        c = verifyJwt(token, o.jwtSecret, { issuer: 'open-webui' })
      } catch (err) {
        throw new IdentityError(`invalid ${o.jwtHeader}: ${err instanceof JwtError ? err.message : 'unreadable'}`)
      }
      // A signed subject that names nobody is refused as an empty one is (RFC 7519 §4.1.2).
      const userId = bounded(normalizeId(c.sub), `the sub claim of ${o.jwtHeader}`)
      if (userId === null) throw new IdentityError(`invalid ${o.jwtHeader}: no subject (the sub claim is empty once control characters and whitespace are removed)`)
      // A signed list, even an empty one, is what the app says: the header does not add to it.
      const claim = o.groupsClaim ?? DEFAULT_GROUPS_CLAIM
      const groups = c.all[claim] === undefined ? null : groupsFromClaim(c.all[claim], `the ${claim} claim of ${o.jwtHeader}`)
      return { userId, name: normalizeId(c.name), email: normalizeId(c.email), role: normalizeId(c.role), chatId, source: 'jwt', groups, apiKey: null }
    }
  } else {
    const sent = one(headers[o.userIdHeader])
    const userId = bounded(normalizeId(sent), o.userIdHeader)
    if (userId !== null) {
      return {
        userId,
        name: normalizeId(decodeName(one(headers[o.userNameHeader]))),
        email: normalizeId(one(headers[o.userEmailHeader])),
        role: normalizeId(one(headers[o.userRoleHeader])),
        chatId,
        source: 'headers',
        groups: null,
        apiKey: null,
      }
    }
    if (sent !== null) empty = o.userIdHeader
  }
  if (o.trustBodyUser && typeof bodyUser === 'string') {
    const userId = bounded(normalizeId(bodyUser), 'the "user" field')
    if (userId !== null) return { userId, name: null, email: null, role: null, chatId, source: 'body', groups: null, apiKey: null }
    if (bodyUser !== '') empty ??= 'the "user" field'
  }
  if (o.requireUserIdentity) {
    const why = empty === null ? '' : `${empty} names nobody once control characters and whitespace are removed; `
    throw new IdentityError(o.jwtSecret
      ? `no user identity: ${why}a signed ${o.jwtHeader} is required (REQUIRE_USER_IDENTITY)`
      : `no user identity: ${why}send ${o.userIdHeader} or a "user" field (REQUIRE_USER_IDENTITY)`)
  }
  return { userId: null, name: null, email: null, role: null, chatId, source: 'organization', groups: null, apiKey: null }
}

/**
 * A request made with an API key: its user is the key's (or the key itself, named as the key is),
 * its groups are the key's. Identity headers, a JWT and the body's `user` are not read: an app
 * holding a key cannot bill anyone else, nor join other groups. Only the chat id is taken.
 */
export function keyIdentity (headers: IncomingHttpHeaders, key: KeyHolder, o: Pick<IdentityOptions, 'chatIdHeader'>): Identity {
  const own = key.userId === null
  return {
    userId: own ? keyUserId(key.id) : key.userId,
    name: own ? key.name : null,
    email: null,
    role: null,
    chatId: one(headers[o.chatIdHeader]),
    source: 'key',
    groups: key.groups,
    apiKey: { id: key.id, name: key.name, models: key.models, rpm: key.rpm },
  }
}

/** A user id past MAX_USER_ID_CHARS is refused: no one is named by it, nor is it the organization. */
function bounded (id: string | null, where: string): string | null {
  if (id !== null && id.length > MAX_USER_ID_CHARS) throw new IdentityError(`${where} is longer than ${MAX_USER_ID_CHARS} characters`)
  return id
}

/**
 * Plain identity headers next to a JWT secret mean a misconfigured app or a forgery attempt:
 * worth a warning, but one per interval, so a flood of them cannot flood the log.
 */
export function ignoredHeadersWarning (log: Logger, o: IdentityOptions, intervalMs = 60_000): () => void {
  let last = -Infinity
  let suppressed = 0
  return () => {
    const now = Date.now()
    if (now - last < intervalMs) { suppressed++; return }
    last = now
    log.warn({ header: o.userIdHeader, jwtHeader: o.jwtHeader, sinceLastWarning: suppressed },
      'plain identity headers arrived although FORWARD_USER_INFO_HEADER_JWT_SECRET is set: they are ignored; only the signed identity counts')
    suppressed = 0
  }
}
