import { createHash } from 'node:crypto'

// What OpenRouter sees as `user`: deterministic from the organization and the app's user id, so
// the same person maps to the same id on every sidecar and after every restart, and reveals
// nothing about them. ASCII, at most 128 characters (OpenRouter's tightest documented limit):
// the organization id is at most 100 characters, plus "_user_" and 16 hex digits.

export function externalUserId (organizationId: string, userId: string): string {
  const hex = createHash('sha256').update(organizationId).update('\0').update(userId).digest('hex').slice(0, 16)
  return `${organizationId}_user_${hex}`
}
