import { Agent, request } from 'undici'

// Bounded load for fault tests and the soak: a fixed number of requests at a fixed concurrency,
// loopback only. Each result remembers the generation id the client saw, if any.

export interface LoadResult { ok: number, failed: number, seen: Set<string>, statuses: Map<number, number> }

export interface LoadOptions {
  url: () => string
  total: number
  concurrency: number
  headers?: Record<string, string>
  /** Called after each finished request with how many have finished; may pause the load. */
  after?: (done: number) => Promise<void> | void
  model?: (i: number) => string
}

export async function runLoad (o: LoadOptions): Promise<LoadResult> {
  const dispatcher = new Agent({ keepAliveTimeout: 1000, connections: o.concurrency })
  const result: LoadResult = { ok: 0, failed: 0, seen: new Set(), statuses: new Map() }
  let next = 0
  let done = 0
  const worker = async () => {
    while (next < o.total) {
      const i = next++
      const stream = i % 2 === 0
      try {
        const res = await request(`${o.url()}/v1/chat/completions`, {
          method: 'POST',
          dispatcher,
          headers: { 'content-type': 'application/json', 'x-openwebui-user-id': `load-user-${i % 7}`, ...o.headers },
          body: JSON.stringify({ model: o.model?.(i) ?? 'fake/ok', stream, messages: [{ role: 'user', content: `q${i}` }] }),
        })
        const gen = res.headers['x-generation-id']
        if (typeof gen === 'string') result.seen.add(gen)
        result.statuses.set(res.statusCode, (result.statuses.get(res.statusCode) ?? 0) + 1)
        await res.body.text()
        result.ok++
      } catch {
        result.failed++
      }
      done++
      await o.after?.(done)
    }
  }
  await Promise.all(Array.from({ length: o.concurrency }, worker))
  await dispatcher.close()
  return result
}
