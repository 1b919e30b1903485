import type { Logger } from '../lib/log.js'

// The organization's OpenRouter key as OpenRouter sees it (GET /key): how much credit is left
// before requests start failing with 402. Polled in the background, at most once a minute, so a
// dashboard can warn before the chat does; never on the request path.

export interface KeyBalance {
  limit: number | null
  limitRemaining: number | null
  usage: number | null
  /** When this answer was read (ms since epoch). */
  at: number
}

export type FetchKey = () => Promise<{ status: number, body: string }>

export interface KeyPoller { latest: () => KeyBalance | null, stop: () => void }

const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null)

export function parseKey (body: string): KeyBalance | null {
  let data: unknown
  try { data = (JSON.parse(body) as { data?: unknown }).data } catch { return null }
  if (data === null || typeof data !== 'object') return null
  const d = data as Record<string, unknown>
  return { limit: num(d.limit), limitRemaining: num(d.limit_remaining), usage: num(d.usage), at: Date.now() }
}

/** Reads /key now and then every `intervalMs` (not below a minute: OpenRouter rate-limits it). */
export function startKeyPoller (fetchKey: FetchKey, log: Logger, intervalMs = 60_000): KeyPoller {
  let latest: KeyBalance | null = null
  let stopped = false
  let warned = false
  const poll = async (): Promise<void> => {
    try {
      const res = await fetchKey()
      const parsed = res.status === 200 ? parseKey(res.body) : null
      if (parsed) { latest = parsed; warned = false; return }
      if (!warned) log.warn({ status: res.status }, 'openrouter: GET /key gave no balance; the credit gauge stays at its last value')
    } catch (err) {
      if (!warned) log.warn({ err: (err as Error).message }, 'openrouter: GET /key failed; the credit gauge stays at its last value')
    }
    warned = true
  }
  void poll()
  const timer = setInterval(() => { if (!stopped) void poll() }, Math.max(intervalMs, 60_000))
  timer.unref()
  return { latest: () => latest, stop () { stopped = true; clearInterval(timer) } }
}
