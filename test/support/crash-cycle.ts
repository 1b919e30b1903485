import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { request } from 'undici'

// What the SIGKILL tests of the journal's intent lines share: requests that carry their own user
// (so a row can be matched to the fake's generation even when no generation id was learned), and
// a look at the journal on disk (the state a SIGKILL leaves).

/** Sends one chat completion as `user`; resolves whatever happens to it (the sidecar may be killed). */
export function sendAs (url: string, user: string, stream: boolean, model = 'fake/ok'): Promise<number> {
  return request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, stream, user, max_tokens: 50, messages: [{ role: 'user', content: `hello from ${user}` }] }),
  }).then(async (r) => { await r.body.text().catch(() => ''); return r.statusCode }, () => 0)
}

export interface JournalLine { k: string, r: { eventId: string, generationId?: string | null, userId?: string | null, estimatedCostUsd?: string | null } }

/** Every readable line of the journal under DATA_DIR, in segment order. */
export function journalLines (dataDir: string): JournalLine[] {
  const dir = join(dataDir, 'journal')
  if (!existsSync(dir)) return []
  const out: JournalLine[] = []
  for (const f of readdirSync(dir).filter((n) => n.startsWith('seg-')).sort()) {
    for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) {
      if (line === '') continue
      try { out.push(JSON.parse(line)) } catch { /* a torn line */ }
    }
  }
  return out
}

export async function until (what: string, ok: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

/**
 * Waits until a sidecar has nothing left to write: no record in memory or in the journal waiting
 * for Postgres, and no generation being looked up (its /metrics). From then on its rows can only
 * change through new requests, so a count read after it holds whatever the timing.
 */
export async function nothingPending (url: string): Promise<void> {
  const gauges = ['usage_proxy_ledger_backlog_records', 'usage_proxy_ledger_queue_depth', 'usage_proxy_journal_backlog', 'usage_proxy_reconciliations_active']
  await until('nothing left to write', async () => {
    const text = await request(`${url}/metrics`).then((r) => r.body.text())
    return gauges.every((g) => new RegExp(`^${g} 0$`, 'm').test(text))
  })
}
