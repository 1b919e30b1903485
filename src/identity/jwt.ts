import { createHmac, timingSafeEqual } from 'node:crypto'

// Open WebUI's signed identity: an HS256 JWT (sub, name, email, role, iss "open-webui", iat,
// exp). Kept on node:crypto rather than `jose` because `jose` verifies asynchronously and identity
// sits on the synchronous request path; test/jwt.test.ts holds it to `jose`'s verdicts and to the
// RFC 7515/7519 edge cases. Only HS256 is accepted, so "alg: none" and key confusion (RS256 with
// the secret as a public key, HS512, ...) fail by construction.

export interface JwtClaims {
  sub: string
  name?: string
  email?: string
  role?: string
  /** Every claim of the verified payload, for the ones read by name from configuration (groups). */
  all: Record<string, unknown>
}

export class JwtError extends Error {}

const B64URL = /^[A-Za-z0-9_-]+$/

/**
 * Longer tokens are refused before anything is decoded: the header and payload are client bytes
 * until the signature is checked, so what JSON.parse reads of them is bounded here. Open WebUI's
 * tokens are a few hundred bytes.
 */
export const MAX_TOKEN_BYTES = 8 * 1024

export function verifyJwt (token: string, secret: string, opts: { issuer?: string, now?: number, leewaySec?: number } = {}): JwtClaims {
  if (token.length > MAX_TOKEN_BYTES) throw new JwtError('token too large')
  const parts = token.split('.')
  if (parts.length !== 3) throw new JwtError('malformed token')
  const [h, p, s] = parts
  // Node's base64url decoder skips characters it does not know: be strict ourselves, so one
  // token has one spelling (RFC 7515 §2: no padding, no line breaks, no other alphabet).
  if (!B64URL.test(h) || !B64URL.test(p)) throw new JwtError('malformed token')
  const header = jsonObject(h)
  const payload = jsonObject(p)
  if (header.alg !== 'HS256') throw new JwtError('unsupported algorithm')
  // RFC 7515 §4.1.11: extensions listed as critical must be understood; we understand none.
  if (header.crit !== undefined) throw new JwtError('unsupported critical header')
  if (!B64URL.test(s)) throw new JwtError('malformed token')
  // Compare the signature as text: a signature with stray low bits decodes to the same bytes.
  const expected = Buffer.from(createHmac('sha256', secret).update(`${h}.${p}`).digest('base64url'))
  const given = Buffer.from(s)
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new JwtError('bad signature')
  const now = opts.now ?? Math.floor(Date.now() / 1000)
  const leeway = opts.leewaySec ?? 30
  if (!isNumericDate(payload.exp) || payload.exp + leeway <= now) throw new JwtError('expired')
  if (payload.nbf !== undefined && (!isNumericDate(payload.nbf) || payload.nbf - leeway > now)) throw new JwtError('not yet valid')
  if (payload.iat !== undefined && !isNumericDate(payload.iat)) throw new JwtError('malformed iat')
  if (opts.issuer !== undefined && payload.iss !== opts.issuer) throw new JwtError('wrong issuer')
  if (typeof payload.sub !== 'string' || payload.sub === '') throw new JwtError('no subject')
  const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined)
  return { sub: payload.sub, name: str(payload.name), email: str(payload.email), role: str(payload.role), all: payload }
}

function jsonObject (part: string): Record<string, unknown> {
  let v: unknown
  try { v = JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) } catch { throw new JwtError('malformed token') }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new JwtError('malformed token')
  return v as Record<string, unknown>
}

/** RFC 7519 §2: seconds since the epoch; a finite JSON number. */
function isNumericDate (v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v)
}
