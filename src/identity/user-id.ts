import { pgText } from '../lib/text.js'

// One rule for every id a client or the app names a user by (body `user`, identity headers, JWT
// claims): cleaned as Postgres will store it (pgText: no NUL, no lone surrogate), and an id with
// nothing visible left (only whitespace, control or format characters) names nobody. Such an id
// is no identity: it is the organization's request, or refused under REQUIRE_USER_IDENTITY,
// never a user whose id is empty, who would escape per-user budgets and rate limits and read the
// organization's unattributed spend in "My usage".

/** Nothing a person could be told apart by: whitespace, separators, control and format characters. */
const NOTHING = /^[\s\p{Z}\p{Cc}\p{Cf}]*$/u

/** The id as the ledger stores it, or null when it names nobody. */
export function normalizeId (raw: string | null | undefined): string | null {
  if (typeof raw !== 'string') return null
  const id = pgText(raw)
  return NOTHING.test(id) ? null : id
}

/**
 * The longest user id accepted (characters): an email fits; a longer id is refused where it is
 * read (identify.ts), since budgets, rate limits and mappings key on it and a btree entry holds
 * at most 2704 bytes.
 */
export const MAX_USER_ID_CHARS = 256
