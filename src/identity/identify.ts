import type { IncomingHttpHeaders } from 'node:http'
import type { Logger } from '../lib/log.js'
import { JwtError, verifyJwt } from './jwt.js'
import { MAX_USER_ID_CHARS, normalizeId } from './user-id.js'

// Who is asking, in order of trust: a signed JWT from the app; the plain headers the app
// forwards (only while no JWT secret is configured: anyone who reaches the sidecar can forge
// them); the OpenAI-style `user` field of the body; else the organization itself. Every id and
// claim comes back normalized (user-id.ts): an id that names nobody counts as not sent.

export interface Identity {
  userId: string | null
  name: string | null
  email: string | null
  role: string | null
  chatId: string | null
  source: 'jwt' | 'headers' | 'body' | 'organization'
  /** The user's groups: sorted, without duplicates, normalized ids; [] for none. */
  groups: string[]
  /** The API key that authenticated the request; null for PROXY_API_KEY (the chat app's key). */
  apiKey: { id: string, name: string, models: string[] | null, rpm: number | null } | null
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
  /** REQUIRE_USER_IDENTITY: a request that names no user is refused rather than billed to the organization. */
  requireUserIdentity?: boolean
  /** Called when plain identity headers arrive although a JWT secret is set (they are ignored). */
  onIgnoredHeaders?: () => void
  /** Where the request's groups come from; none without it. */
  groupsOf?: (headers: IncomingHttpHeaders) => string[]
}

export class IdentityError extends Error {}

/** The headers that carry identity: they stay with the sidecar and never travel upstream. */
export function identityHeaders (o: IdentityOptions): Set<string> {
  return new Set([o.userIdHeader, o.userNameHeader, o.userEmailHeader, o.userRoleHeader, o.chatIdHeader, o.jwtHeader])
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

export function identify (headers: IncomingHttpHeaders, bodyUser: unknown, o: IdentityOptions): Identity {
  const who = person(headers, bodyUser, o)
  if (o.groupsOf) who.groups = o.groupsOf(headers)
  return who
}

function person (headers: IncomingHttpHeaders, bodyUser: unknown, o: IdentityOptions): Identity {
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
      return { userId, name: normalizeId(c.name), email: normalizeId(c.email), role: normalizeId(c.role), chatId, source: 'jwt', groups: [], apiKey: null }
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
        groups: [],
        apiKey: null,
      }
    }
    if (sent !== null) empty = o.userIdHeader
  }
  if (o.trustBodyUser && typeof bodyUser === 'string') {
    const userId = bounded(normalizeId(bodyUser), 'the "user" field')
    if (userId !== null) return { userId, name: null, email: null, role: null, chatId, source: 'body', groups: [], apiKey: null }
    if (bodyUser !== '') empty ??= 'the "user" field'
  }
  if (o.requireUserIdentity) {
    const why = empty === null ? '' : `${empty} names nobody once control characters and whitespace are removed; `
    throw new IdentityError(o.jwtSecret
      ? `no user identity: ${why}a signed ${o.jwtHeader} is required (REQUIRE_USER_IDENTITY)`
      : `no user identity: ${why}send ${o.userIdHeader} or a "user" field (REQUIRE_USER_IDENTITY)`)
  }
  return { userId: null, name: null, email: null, role: null, chatId, source: 'organization', groups: [], apiKey: null }
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
