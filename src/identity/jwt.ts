import { createHmac, timingSafeEqual } from 'node:crypto'

// Open WebUI's signed identity: an HS256 JWT (sub, name, email, role, iss "open-webui", iat,
// exp). A dozen lines of node:crypto; no JWT library, no algorithm negotiation: only HS256 is
// accepted, so "alg: none" and key-confusion tricks fail by construction.

export interface JwtClaims { sub: string, name?: string, email?: string, role?: string }

export class JwtError extends Error {}

const HEADER_OK = new Set(['HS256'])

export function verifyJwt (token: string, secret: string, opts: { issuer?: string, now?: number, leewaySec?: number } = {}): JwtClaims {
  const parts = token.split('.')
  if (parts.length !== 3) throw new JwtError('malformed token')
  const [h, p, s] = parts
  let header: { alg?: string }
  let payload: Record<string, unknown>
  try {
    header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8'))
    payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'))
  } catch { throw new JwtError('malformed token') }
  if (!header || !HEADER_OK.has(String(header.alg))) throw new JwtError('unsupported algorithm')
  const expected = createHmac('sha256', secret).update(`${h}.${p}`).digest()
  const given = Buffer.from(s, 'base64url')
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new JwtError('bad signature')
  const now = opts.now ?? Math.floor(Date.now() / 1000)
  const leeway = opts.leewaySec ?? 30
  if (typeof payload.exp !== 'number' || payload.exp + leeway < now) throw new JwtError('expired')
  if (typeof payload.nbf === 'number' && payload.nbf - leeway > now) throw new JwtError('not yet valid')
  if (opts.issuer !== undefined && payload.iss !== opts.issuer) throw new JwtError('wrong issuer')
  if (typeof payload.sub !== 'string' || payload.sub === '') throw new JwtError('no subject')
  const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined)
  return { sub: payload.sub, name: str(payload.name), email: str(payload.email), role: str(payload.role) }
}

/** For tests and tools: signs claims the way Open WebUI does. */
export function signJwt (claims: Record<string, unknown>, secret: string): string {
  const h = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url')
  const p = Buffer.from(JSON.stringify(claims)).toString('base64url')
  const s = createHmac('sha256', secret).update(`${h}.${p}`).digest('base64url')
  return `${h}.${p}.${s}`
}
