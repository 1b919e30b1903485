import pino, { type Logger } from 'pino'

export type { Logger }

// Keys that may carry a secret anywhere in a logged object. Redaction is a second line of
// defence: the code never logs these values in the first place.
const secretPaths = [
  'authorization', 'headers.authorization', 'req.headers.authorization', '*.authorization',
  'apiKey', '*.apiKey', 'password', '*.password', 'OPENROUTER_API_KEY', 'PROXY_API_KEY',
]

export function createLogger (level: string, destination?: pino.DestinationStream): Logger {
  return pino({
    level,
    base: { service: 'usage-proxy' },
    redact: { paths: secretPaths, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  }, destination)
}

/** Replaces every occurrence of the given secrets in a text: for error messages from libraries. */
export function scrub (text: string, secrets: Array<string | undefined>): string {
  let out = text
  for (const s of secrets) if (s && s.length >= 4) out = out.split(s).join('[redacted]')
  return out
}
