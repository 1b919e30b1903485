import type { IncomingMessage } from 'node:http'

// Small request bodies read whole (admin calls, the sign-in form). The metered path streams its
// bodies into reused memory instead (proxy/metered.ts); these are bounded and rare.

/** The whole body as UTF-8 text; null past `limit` bytes (leaving the loop destroys the request). */
export async function readText (req: IncomingMessage, limit: number): Promise<string | null> {
  const parts: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length
    if (size > limit) return null
    parts.push(chunk)
  }
  return Buffer.concat(parts).toString('utf8')
}

/** The whole body as a JSON value (admin bodies are small): null when it is not one. */
export async function readJson (req: IncomingMessage, limit = 64 * 1024): Promise<unknown> {
  const text = await readText(req, limit)
  if (text === null) return null
  try { return JSON.parse(text) } catch { return null }
}
