import { randomUUID } from 'node:crypto'
import type postgres from 'postgres'
import { externalUserId } from '../../src/identity/external-id.js'

// A seeded ledger for the usage views: users with names and emails, several models, days,
// tasks and outcomes, and costs with many decimals (the kind that float sums get wrong).

export const ORG = 'mai_client_63a4eb6d'
export const USERS = [
  { id: 'u-anna', name: 'Anna Müller', email: 'anna@acme.test' },
  { id: 'u-bob', name: 'Bob "the builder", Jr.', email: 'bob@acme.test' },
  { id: 'u-chen', name: '陈 晨', email: 'chen@acme.test' },
]
export const MODELS = ['openai/gpt-4o', 'anthropic/claude-sonnet-4', 'google/gemini-2.5-flash']
const KINDS = ['chat', 'chat', 'chat', 'title_generation', 'tags_generation', 'api']
const OUTCOMES = ['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'client_aborted', 'upstream_error', 'stream_error']

function mulberry32 (seed: number): () => number {
  return () => {
    seed |= 0; seed = seed + 0x6D2B79F5 | 0
    let t = Math.imul(seed ^ seed >>> 15, 1 | seed)
    t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t
    return ((t ^ t >>> 14) >>> 0) / 4294967296
  }
}

export interface SeedOptions { rows: number, from: string, days: number, seed?: number, organizationId?: string, markup?: string }

/** Inserts rows spread over `days` days from `from` (UTC), and the user mappings. */
export async function seedLedger (sql: postgres.Sql<{}>, o: SeedOptions): Promise<void> {
  const org = o.organizationId ?? ORG
  const rnd = mulberry32(o.seed ?? 7)
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)]
  await sql`insert into organizations (id, name, markup_percent) values (${org}, ${'Org ' + org}, ${o.markup ?? '12.5'}) on conflict (id) do nothing`
  for (const u of USERS) {
    await sql`insert into user_mappings (organization_id, user_id, external_user_id, user_name, user_email)
      values (${org}, ${u.id}, ${externalUserId(org, u.id)}, ${u.name}, ${u.email}) on conflict do nothing`
  }
  const start = Date.parse(o.from + 'T00:00:00Z')
  // Tests that seed an older schema (before migration 017) get rows without groups.
  const [{ grouped }] = await sql<Array<{ grouped: boolean }>>`
    select exists (select 1 from information_schema.columns where table_name = 'usage_events' and column_name = 'groups') as grouped`
  const rows: Record<string, unknown>[] = []
  for (let i = 0; i < o.rows; i++) {
    const user = rnd() < 0.1 ? null : pick(USERS)
    const outcome = pick(OUTCOMES)
    const failed = outcome === 'upstream_error'
    const prompt = failed ? null : Math.floor(rnd() * 5000)
    const completion = failed ? null : Math.floor(rnd() * 2000)
    rows.push({
      event_id: randomUUID(),
      generation_id: failed ? null : `gen-${randomUUID()}`,
      organization_id: org,
      user_id: user?.id ?? null,
      external_user_id: user ? externalUserId(org, user.id) : org,
      endpoint: 'chat/completions',
      model: pick(MODELS),
      served_model: null,
      provider: 'Fake',
      streamed: rnd() < 0.7,
      status: failed ? 402 : 200,
      outcome,
      usage_source: failed ? 'none' : 'inline',
      prompt_tokens: prompt,
      completion_tokens: completion,
      total_tokens: failed ? null : prompt! + completion!,
      cached_tokens: failed ? null : Math.floor(rnd() * 100),
      reasoning_tokens: failed ? null : Math.floor(rnd() * 50),
      // up to 12 decimals, e.g. 0.000123456789
      cost_usd: failed ? null : (Math.floor(rnd() * 1e9) / 1e12).toFixed(12).replace(/0+$/, '').replace(/\.$/, ''),
      markup_percent: o.markup ?? '12.5',
      kind: pick(KINDS),
      // Open WebUI groups, without drawing from rnd (the rest of the seed stays as it was): a
      // third of the users' rows in one group, a third in two, a third in none.
      ...(grouped ? { groups: user === null ? [] : [['Sales'], ['Engineering', 'Sales'], []][i % 3] } : {}),
      created_at: new Date(start + Math.floor(rnd() * o.days * 86_400_000)).toISOString(),
    })
    if (rows.length === 1000 || i === o.rows - 1) { await sql`insert into usage_events ${sql(rows)}`; rows.length = 0 }
  }
}
