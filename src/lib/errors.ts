import type { ServerResponse } from 'node:http'

// Every error the sidecar itself produces has OpenAI's shape, so SDKs and the chat app show the
// message instead of a parse failure.

export type ErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'api_error' | 'upstream_error' | 'service_unavailable' | 'rate_limit_exceeded'

export function sendError (res: ServerResponse, status: number, type: ErrorType, code: string, message: string, extra?: Record<string, string>): void {
  if (res.headersSent) { res.destroy(); return }
  const body = JSON.stringify({ error: { message, type, code } })
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...extra })
  res.end(body)
}
