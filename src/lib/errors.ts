import type { ServerResponse } from 'node:http'

// Every error the sidecar itself produces has OpenAI's shape, so SDKs and the chat app show the
// message instead of a parse failure. This is the one place that writes it.

export type ErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'api_error' | 'upstream_error' | 'service_unavailable' | 'rate_limit_exceeded' | 'insufficient_quota'

/** The JSON text of an error: {"error":{"message","type","code"[,"param"]}}. */
export function errorBody (type: ErrorType, code: string, message: string, param?: string | null): string {
  return JSON.stringify({ error: param === undefined ? { message, type, code } : { message, type, code, param } })
}

/**
 * `headers` go beside content-type and content-length (retry-after, www-authenticate). `param` is
 * OpenAI's: the body carries it only when given, null included (a refusal sets it so OpenAI's SDK
 * parses the body into an APIError); an error without it keeps the three-field body.
 */
export function sendError (res: ServerResponse, status: number, type: ErrorType, code: string, message: string, headers?: Record<string, string>, param?: string | null): void {
  // Too late for a status line: the client sees the connection end instead of a second answer.
  if (res.headersSent || res.destroyed) { res.destroy(); return }
  const body = errorBody(type, code, message, param)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers })
  res.end(body)
}
