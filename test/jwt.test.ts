import t from 'tap'
import { createHmac, generateKeyPairSync } from 'node:crypto'
import { SignJWT, UnsecuredJWT, jwtVerify } from 'jose'
import { verifyJwt, type JwtClaims } from '../src/identity/jwt.js'

/** The named claims, without the whole payload that rides along for configured claim names. */
const known = ({ all: _all, ...named }: JwtClaims): Omit<JwtClaims, 'all'> => named

// The hand-written HS256 verifier held to `jose` (a maintained JOSE implementation): every
// token below gets the same verdict from both, and the RFC 7515/7519 edge cases are named one by
// one. Where jose is lenient about the encoding (padding, stray bits, whitespace in the
// signature), ours is stricter on purpose: one token, one spelling.

const SECRET = 'open-webui-shared-secret-0123456789'
const KEY = new TextEncoder().encode(SECRET)
const NOW = Math.floor(Date.now() / 1000)
const LEEWAY = 30

const b64 = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url')
const hs = (alg: 'sha256' | 'sha384' | 'sha512', input: string, secret: string | Buffer = SECRET) => createHmac(alg, secret).update(input).digest('base64url')
/** A token with any header and claims, HMAC-SHA256-signed with the shared secret. */
function forge (header: unknown, claims: unknown, secret: string | Buffer = SECRET): string {
  const input = `${b64(header)}.${b64(claims)}`
  return `${input}.${hs('sha256', input, secret)}`
}
const claims = (extra: Record<string, unknown> = {}) => ({ sub: 'user-1', name: 'Zoë', email: 'z@x', role: 'user', iss: 'open-webui', iat: NOW, exp: NOW + 300, ...extra })
const joseSign = (c: Record<string, unknown>, header: Record<string, unknown> = {}, alg = 'HS256') =>
  new SignJWT(c).setProtectedHeader({ alg, ...header }).sign(KEY)

function ours (token: string): string {
  try { verifyJwt(token, SECRET, { issuer: 'open-webui', now: NOW, leewaySec: LEEWAY }); return 'accept' } catch (e) { return `reject: ${(e as Error).message}` }
}
async function jose (token: string): Promise<string> {
  try {
    await jwtVerify(token, KEY, { algorithms: ['HS256'], issuer: 'open-webui', clockTolerance: LEEWAY, requiredClaims: ['exp', 'sub'], currentDate: new Date(NOW * 1000) })
    return 'accept'
  } catch (e) { return `reject: ${(e as { code?: string }).code}` }
}

t.test('same verdict as jose on every case, and the right one', async (t) => {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const publicPem = publicKey.export({ type: 'spki', format: 'pem' }) as string
  const good = await joseSign(claims())
  const [h, p] = good.split('.')
  const cases: Array<[string, string, boolean]> = [
    ['a jose-signed HS256 token', good, true],
    ['jose-signed with typ and kid', await joseSign(claims(), { typ: 'JWT', kid: 'k1' }), true],
    ['Open WebUI\'s own shape (no nbf)', forge({ alg: 'HS256', typ: 'JWT' }, claims()), true],
    // RFC 7518 §3.6 and RFC 8725 §2.1: "none" is never accepted.
    ['alg none (jose UnsecuredJWT)', new UnsecuredJWT(claims()).encode(), false],
    ['alg none carrying a valid HS256 signature', `${b64({ alg: 'none' })}.${p}.${hs('sha256', `${b64({ alg: 'none' })}.${p}`)}`, false],
    ['alg "None"', forge({ alg: 'None' }, claims()), false],
    // Algorithm confusion (RFC 8725 §2.1): only HS256 with our secret.
    ['HS512 with the same secret', await joseSign(claims(), {}, 'HS512'), false],
    ['HS384 with the same secret', await joseSign(claims(), {}, 'HS384'), false],
    ['RS256 signed with an RSA key', await new SignJWT(claims()).setProtectedHeader({ alg: 'RS256' }).sign(privateKey), false],
    ['RS256 header, HMAC over the public key PEM', forge({ alg: 'RS256' }, claims(), publicPem), false],
    ['RS256 header, HMAC with the secret', forge({ alg: 'RS256' }, claims()), false],
    ['alg written in lower case', forge({ alg: 'hs256' }, claims()), false],
    ['no alg at all', forge({ typ: 'JWT' }, claims()), false],
    // Signature.
    ['signed with another secret', await new SignJWT(claims()).setProtectedHeader({ alg: 'HS256' }).sign(new TextEncoder().encode('another-secret-of-some-length')), false],
    ['payload swapped under a valid signature', `${h}.${b64(claims({ sub: 'admin' }))}.${good.split('.')[2]}`, false],
    ['empty signature', `${h}.${p}.`, false],
    // RFC 7515 §4.1.11: a critical extension we do not understand must fail.
    ['crit naming an unknown extension', forge({ alg: 'HS256', crit: ['x-ext'], 'x-ext': 1 }, claims()), false],
    ['crit with b64 false (RFC 7797)', forge({ alg: 'HS256', crit: ['b64'], b64: false }, claims()), false],
    // Times (RFC 7519 §4.1.4, §4.1.5), with 30 s of clock skew either way.
    ['expired long ago', await joseSign(claims({ exp: NOW - 3600 })), false],
    ['expired just past the skew', await joseSign(claims({ exp: NOW - LEEWAY - 1 })), false],
    ['expired exactly at the skew', await joseSign(claims({ exp: NOW - LEEWAY })), false],
    ['expired within the skew', await joseSign(claims({ exp: NOW - LEEWAY + 1 })), true],
    ['no exp', forge({ alg: 'HS256' }, { sub: 'user-1', iss: 'open-webui' }), false],
    ['exp as a string', forge({ alg: 'HS256' }, claims({ exp: String(NOW + 300) })), false],
    ['nbf within the skew', await joseSign(claims({ nbf: NOW + LEEWAY })), true],
    ['nbf past the skew', await joseSign(claims({ nbf: NOW + LEEWAY + 1 })), false],
    ['nbf as a string', forge({ alg: 'HS256' }, claims({ nbf: String(NOW) })), false],
    ['iat as a string', forge({ alg: 'HS256' }, claims({ iat: 'yesterday' })), false],
    // Claims.
    ['no sub', forge({ alg: 'HS256' }, claims({ sub: undefined })), false],
    ['wrong iss', await joseSign(claims({ iss: 'elsewhere' })), false],
    ['no iss', forge({ alg: 'HS256' }, claims({ iss: undefined })), false],
    // Shape.
    ['header not an object', forge('"HS256"', claims()), false],
    ['claims an array', forge({ alg: 'HS256' }, [claims()]), false],
    ['claims not JSON', `${h}.${b64('not json')}.${hs('sha256', `${h}.${b64('not json')}`)}`, false],
    ['two parts', `${h}.${p}`, false],
    ['five parts (a JWE)', `${h}.${p}.a.b.c`, false],
    ['standard base64 alphabet', good.replace(/-/g, '+').replace(/_/g, '/'), /[-_]/.test(good) ? false : true],
  ]
  for (const [name, token, expected] of cases) {
    const a = ours(token)
    const b = await jose(token)
    t.equal(a === 'accept', expected, `${name}: ours ${a}`)
    t.equal(b === 'accept', expected, `${name}: jose ${b}`)
  }
})

t.test('stricter than jose about the encoding of the signature: one token, one spelling', async (t) => {
  const good = await joseSign(claims())
  const [h, p, s] = good.split('.')
  // 43 base64url characters hold 258 bits: the last one carries two spare bits.
  const last = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'.indexOf(s.at(-1)!)
  const strayBits = `${h}.${p}.${s.slice(0, -1)}${'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'[last ^ 1]}`
  for (const [name, token] of [['padded signature', `${good}=`], ['stray low bits', strayBits], ['whitespace inside', `${h}.${p}.${s.slice(0, 5)} ${s.slice(5)}`],
    ['padded payload', `${h}.${p}=.${s}`], ['a character outside the alphabet', `${h}.${p}.${s.slice(0, 5)}*${s.slice(5)}`]]) {
    t.match(ours(token), /^reject: (malformed token|bad signature)$/, name)
  }
  t.equal(ours(good), 'accept')
})

t.test('sub must be a non-empty string (RFC 7519 §4.1.2), which jose checks only when asked for one subject', async (t) => {
  t.equal(ours(forge({ alg: 'HS256' }, claims({ sub: 42 }))), 'reject: no subject')
  t.equal(ours(forge({ alg: 'HS256' }, claims({ sub: '' }))), 'reject: no subject')
})

t.test('the claims come back as the app sent them', async (t) => {
  t.same(known(verifyJwt(await joseSign(claims()), SECRET, { issuer: 'open-webui' })), { sub: 'user-1', name: 'Zoë', email: 'z@x', role: 'user' })
  t.same(known(verifyJwt(await joseSign(claims({ name: '', email: 7 })), SECRET)), { sub: 'user-1', name: undefined, email: undefined, role: 'user' }, 'empty or odd optional claims are dropped')
})
