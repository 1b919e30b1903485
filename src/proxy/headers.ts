import type { IncomingHttpHeaders } from 'node:http'

// The one place that decides which request headers travel to OpenRouter, for the metered path
// and the passthrough alike. A header is dropped when it is hop-by-hop (RFC 9110 §7.6.1, and
// every name the client listed in its own `Connection`), when it carries a credential or the
// user's identity (OpenRouter learns the user only as the opaque `user` id), or when it could
// change what the request means upstream (method overrides, `expect`).

export interface UpstreamHeaderPolicy {
  apiKey: string
  /** APP_URL: sent as HTTP-Referer only when configured. */
  appUrl: string | undefined
  appTitle: string
  /** identityHeaders(identity options): they stay with the sidecar. */
  identityHeaders: Set<string>
}

const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authenticate']
const CREDENTIALS = ['authorization', 'proxy-authorization', 'cookie', 'x-api-key']
/** Set here, or computed by the HTTP client from the body actually sent. */
const OURS = ['host', 'content-length', 'expect', 'http-referer', 'x-title', 'accept-encoding']
/** Frameworks that honour these would turn a GET into a DELETE, or a metered POST into something else. */
const METHOD_OVERRIDES = ['x-http-method-override', 'x-http-method', 'x-method-override']

const DROP = new Set([...HOP_BY_HOP, ...CREDENTIALS, ...OURS, ...METHOD_OVERRIDES])

/**
 * The headers to send upstream for one client request. `acceptEncoding` is what to ask
 * OpenRouter for: 'identity' when the response is read by the tap, the client's own otherwise.
 */
export function upstreamHeaders (incoming: IncomingHttpHeaders, p: UpstreamHeaderPolicy, acceptEncoding: 'identity' | 'client'): Record<string, string> {
  const named = namedInConnection(incoming.connection)
  const out: Record<string, string> = {}
  for (const name in incoming) {
    if (DROP.has(name) || name.startsWith('x-openwebui-') || p.identityHeaders.has(name) || named?.has(name)) continue
    const v = incoming[name]
    if (typeof v === 'string') out[name] = v
    else if (Array.isArray(v)) out[name] = v.join(', ')
  }
  out.authorization = `Bearer ${p.apiKey}`
  if (acceptEncoding === 'identity') out['accept-encoding'] = 'identity'
  else if (typeof incoming['accept-encoding'] === 'string' && !named?.has('accept-encoding')) out['accept-encoding'] = incoming['accept-encoding']
  if (p.appUrl) out['http-referer'] = p.appUrl
  out['x-title'] = p.appTitle
  return out
}

/** RFC 9110 §7.6.1: the options of `Connection` name further hop-by-hop headers. */
function namedInConnection (value: string | string[] | undefined): Set<string> | null {
  if (value === undefined) return null
  const names = new Set<string>()
  for (const part of (Array.isArray(value) ? value.join(',') : value).split(',')) {
    const name = part.trim().toLowerCase()
    if (name !== '') names.add(name)
  }
  return names
}
