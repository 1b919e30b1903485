import type { Server } from 'node:http'
import type { Duplex } from 'node:stream'
import { errorBody } from '../lib/errors.js'

// A request Node cannot parse (headers too large, bad framing, a timeout before the request
// was whole) never reaches a route. Node's own answer is a bare status line with no body; this
// gives it the OpenAI error shape like every other error, with the same status.

const ANSWERS: Record<string, [number, string, string, string]> = {
  HPE_HEADER_OVERFLOW: [431, 'Request Header Fields Too Large', 'headers_too_large', 'the request headers are too large'],
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'Request Timeout', 'request_timeout', 'the request was not received in time'],
}
const BAD: [number, string, string, string] = [400, 'Bad Request', 'malformed_request', 'the HTTP request could not be parsed']

export function answerClientErrors (server: Server): void {
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    const started = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true
    if (err.code === 'ECONNRESET' || !socket.writable || started) { socket.destroy(); return }
    const [status, reason, code, message] = ANSWERS[err.code ?? ''] ?? BAD
    const body = errorBody('invalid_request_error', code, message)
    socket.end(`HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`)
  })
}
