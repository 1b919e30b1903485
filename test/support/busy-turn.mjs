// Preloaded into a sidecar process (NODE_OPTIONS=--import) by tests: once a response with a
// declared Content-Length has handed its last body byte to the socket, the rest of that
// event-loop turn is made to last BUSY_TURN_MS (as when many other exchanges are handled in the
// same turn under load). Nothing in the sidecar is replaced; its turn only gets longer.
import http from 'node:http'

const ms = Number(process.env.BUSY_TURN_MS ?? 0)
const write = http.ServerResponse.prototype.write
http.ServerResponse.prototype.write = function (chunk, ...rest) {
  const ok = write.call(this, chunk, ...rest)
  if (ms > 0 && chunk && typeof this._header === 'string') {
    const declared = /\r\ncontent-length: *(\d+)/i.exec(this._header)
    this.__bodyBytes = (this.__bodyBytes ?? 0) + Buffer.byteLength(chunk)
    if (declared && this.__bodyBytes >= Number(declared[1]) && !this.__stalled) {
      this.__stalled = true
      // After the callback that wrote it (undici's read: headers, data and completion), before the turn ends.
      process.nextTick(() => { const until = Date.now() + ms; while (Date.now() < until) { /* busy */ } })
    }
  }
  return ok
}
