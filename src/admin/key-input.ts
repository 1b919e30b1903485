import { canonicalGroup } from '../identity/groups.js'
import { budgetSetting, type BudgetSetting } from './budgets.js'

// The body of POST /admin/v1/keys, checked field by field before anything is written: an unknown
// field, a wrong type, a date in the past or a list too long is refused with a message naming it.

export interface KeyInput {
  name: string
  userId: string | null
  groups: string[]
  budget: BudgetSetting | null
  rpm: number | null
  models: string[] | null
  /** ISO 8601 instant, or null: the key never expires. */
  expiresAt: string | null
}

const FIELDS = ['name', 'user_id', 'groups', 'budget', 'rpm', 'models', 'expires_at']
export const MAX_NAME_CHARS = 200
const MAX_ID_CHARS = 256
/** As many groups, as long, as a request may name through its header (identity/groups.ts rules). */
const MAX_GROUPS = 64
const MAX_GROUP_CHARS = 128
const MAX_MODELS = 1000
const MAX_RPM = 1_000_000
/** RFC 3339 with a zone: a bare date or a local time would expire at a moment nobody chose. */
const INSTANT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/i
/** Control and format characters, which would make a name or an id print as something else. */
const INVISIBLE = /[\p{Cc}\p{Cf}]/u

export function keyInput (body: unknown, now: Date): string | KeyInput {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    return 'the body must be a JSON object such as {"name": "reporting-bot", "rpm": 60} (and at most 64 KiB)'
  }
  const b = body as Record<string, unknown>
  for (const k of Object.keys(b)) if (!FIELDS.includes(k)) return `unknown field ${k}: the fields are ${FIELDS.join(', ')}`

  if (typeof b.name !== 'string') return 'name is required: a string of 1 to 200 characters saying what the key is for'
  const name = b.name.trim()
  if (name === '' || name.length > MAX_NAME_CHARS || INVISIBLE.test(name)) return `name must be 1 to ${MAX_NAME_CHARS} printable characters`

  let userId: string | null = null
  if (b.user_id !== undefined && b.user_id !== null) {
    if (typeof b.user_id !== 'string' || b.user_id.trim() === '' || b.user_id.length > MAX_ID_CHARS || INVISIBLE.test(b.user_id)) {
      return `user_id must be a user id of 1 to ${MAX_ID_CHARS} printable characters, or null for the key to be its own user`
    }
    if (b.user_id.startsWith('key:')) return 'user_id must not start with "key:": those ids name API keys'
    userId = b.user_id
  }

  let groups: string[] = []
  if (b.groups !== undefined && b.groups !== null) {
    if (!Array.isArray(b.groups) || b.groups.length > MAX_GROUPS) return `groups must be an array of at most ${MAX_GROUPS} group ids`
    for (const g of b.groups) {
      if (typeof g !== 'string' || g.trim() === '' || g.trim().length > MAX_GROUP_CHARS || INVISIBLE.test(g) || g.includes(',') || /\{\{.*\}\}/.test(g)) {
        return `each group must be a group id of 1 to ${MAX_GROUP_CHARS} printable characters, without a comma or a {{template}}`
      }
    }
    groups = [...new Set((b.groups as string[]).map(canonicalGroup))].sort()
  }

  let budget: BudgetSetting | null = null
  if (b.budget !== undefined && b.budget !== null) {
    const checked = budgetSetting(b.budget, 'budget')
    if (typeof checked === 'string') return `budget: ${checked}`
    budget = checked
  }

  let rpm: number | null = null
  if (b.rpm !== undefined && b.rpm !== null) {
    if (typeof b.rpm !== 'number' || !Number.isInteger(b.rpm) || b.rpm < 1 || b.rpm > MAX_RPM) return `rpm must be a whole number of requests per minute from 1 to ${MAX_RPM}, or null for no limit of its own`
    rpm = b.rpm
  }

  let models: string[] | null = null
  if (b.models !== undefined && b.models !== null) {
    if (!Array.isArray(b.models) || b.models.length === 0 || b.models.length > MAX_MODELS) {
      return `models must be an array of 1 to ${MAX_MODELS} model ids (such as "openai/gpt-4o-mini"), or null for every model`
    }
    for (const m of b.models) {
      if (typeof m !== 'string' || m === '' || m.length > MAX_ID_CHARS || /\s/.test(m) || INVISIBLE.test(m)) {
        return `each model must be a model id of 1 to ${MAX_ID_CHARS} characters without spaces`
      }
    }
    models = [...new Set(b.models as string[])]
  }

  let expiresAt: string | null = null
  if (b.expires_at !== undefined && b.expires_at !== null) {
    const at = typeof b.expires_at === 'string' && INSTANT.test(b.expires_at) && realDay(b.expires_at) ? new Date(b.expires_at) : null
    if (at === null || Number.isNaN(at.getTime()) || at.getUTCFullYear() > 9999) {
      return 'expires_at must be an instant such as "2027-01-31T23:59:59Z" (with Z or an offset), or null for a key that never expires'
    }
    if (at.getTime() <= now.getTime()) return `expires_at (${b.expires_at}) is not in the future`
    expiresAt = at.toISOString()
  }

  return { name, userId, groups, budget, rpm, models, expiresAt }
}

/** Date parsing rolls 2027-02-30 over into March: the day must exist in its month. */
function realDay (instant: string): boolean {
  const [y, m, d] = instant.slice(0, 10).split('-').map(Number)
  return m >= 1 && m <= 12 && d >= 1 && new Date(Date.UTC(y, m - 1, d)).getUTCDate() === d
}
