import { createHash } from 'node:crypto'
import type { Sql } from './connect.js'

export interface Organization { id: string, name: string, markupPercent: string }

/** Enough to tell two keys apart in the database, useless for calling OpenRouter. */
export function keyFingerprint (apiKey: string): string {
  return 'sha256:' + createHash('sha256').update(apiKey).digest('hex').slice(0, 16)
}

/** Creates or refreshes the organization row; returns true when it was created. */
export async function upsertOrganization (sql: Sql, org: Organization, apiKey: string): Promise<boolean> {
  const [row] = await sql<{ created: boolean }[]>`
    insert into organizations (id, name, markup_percent, api_key_fingerprint)
    values (${org.id}, ${org.name}, ${org.markupPercent}, ${keyFingerprint(apiKey)})
    on conflict (id) do update set
      name = excluded.name,
      markup_percent = excluded.markup_percent,
      api_key_fingerprint = excluded.api_key_fingerprint,
      updated_at = now()
    where (organizations.name, organizations.markup_percent, organizations.api_key_fingerprint)
      is distinct from (excluded.name, excluded.markup_percent, excluded.api_key_fingerprint)
    returning (xmax = 0) as created`
  return row?.created ?? false
}
