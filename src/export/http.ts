import { retryAfterMs } from './backoff.js'

// One POST to a receiver, and what its answer means for the rows it carried. Timeouts and
// network errors, 408, 409, 425, 429 and 5xx are temporary; 401, 403 and 404 are taken as a
// configuration problem (wrong key, wrong URL) and retried too, so a typo never sets a whole
// ledger aside; other 4xx refuse what was sent.

export interface Answer {
  kind: 'ok' | 'retry' | 'refused'
  status: number
  body: string
  afterMs?: number
  reason: string
}

const TEMPORARY = new Set([401, 403, 404, 408, 409, 425, 429])

export async function post (url: string, body: string, headers: Record<string, string>, signal: AbortSignal, timeoutMs = 30_000): Promise<Answer> {
  let res: Response
  try {
    res = await fetch(url, { method: 'POST', body, headers, signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) })
  } catch (err) {
    const e = err as { name?: string, message?: string, cause?: { code?: string } }
    return { kind: 'retry', status: 0, body: '', reason: `no answer from ${new URL(url).host}: ${e.cause?.code ?? e.name ?? ''} ${e.message ?? ''}`.trim() }
  }
  const text = (await res.text().catch(() => '')).slice(0, 2000)
  const afterMs = retryAfterMs(res.headers.get('retry-after'))
  if (res.status >= 200 && res.status < 300) return { kind: 'ok', status: res.status, body: text, reason: '' }
  const reason = `HTTP ${res.status} from ${new URL(url).host}: ${text.replace(/\s+/g, ' ').slice(0, 300)}`
  if (res.status >= 500 || TEMPORARY.has(res.status)) return { kind: 'retry', status: res.status, body: text, afterMs, reason }
  return { kind: 'refused', status: res.status, body: text, reason }
}
