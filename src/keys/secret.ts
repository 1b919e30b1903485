import { createHash, randomBytes } from 'node:crypto'

// An API key's secret: `upk_` and 32 random bytes in base64url (43 characters). Only its SHA-256
// is stored; the first characters are kept as a prefix for people to tell keys apart. 256 random
// bits need no salt: the hash can neither be reversed nor guessed, and it is looked up directly.

export const SECRET_PREFIX = 'upk_'
const SHAPE = /^upk_[A-Za-z0-9_-]{43}$/
/** What a key's prefix shows: `upk_` and 8 characters (48 of the 256 bits). */
const SHOWN = SECRET_PREFIX.length + 8

export interface NewSecret { secret: string, hash: string, prefix: string }

export function newSecret (): NewSecret {
  const secret = SECRET_PREFIX + randomBytes(32).toString('base64url')
  return { secret, hash: hashSecret(secret), prefix: secret.slice(0, SHOWN) }
}

/** Hex SHA-256 of the secret as sent: what api_keys.secret_hash holds. */
export function hashSecret (secret: string): string {
  return createHash('sha256').update(secret).digest('hex')
}

/** Whether a presented credential claims to be one of ours (it is then checked, whatever else is configured). */
export function claimsApiKey (credential: string): boolean {
  return credential.startsWith(SECRET_PREFIX)
}

/** Whether it has the exact shape of a secret newSecret() makes: anything else is unknown without a lookup. */
export function wellFormed (credential: string): boolean {
  return SHAPE.test(credential)
}

/** A key id: `key_` and 16 random base64url characters (96 bits). */
export function newKeyId (): string {
  return 'key_' + randomBytes(12).toString('base64url')
}
