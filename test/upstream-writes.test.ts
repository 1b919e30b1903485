import t from 'tap'
import { createServer, type Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import { createUpstream } from '../src/proxy/upstream.js'

// BodyMemory reuses a request body's buffer only once the socket that body went out on has no
// write pending (src/proxy/body/body-memory.ts): an upstream that answers before it has read the whole
// body leaves the rest of that body in the process, still pointing into the buffer. Other
// sockets' writes do not hold it back: with eight 4 MB images in flight one always has a write.

t.test('writing(body) is true while the socket it went out on has not taken it, and only that body', async (t) => {
  const sockets: Socket[] = []
  // Answers as soon as the request line arrives and keeps the connection; `/stall` reads
  // nothing more, other paths read all there is.
  const server = createServer((socket) => {
    sockets.push(socket)
    socket.once('data', (first) => {
      if (first.toString('latin1').startsWith('POST /api/v1/stall')) socket.pause()
      else socket.resume()
      socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}')
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => { for (const s of sockets) s.destroy(); server.close() })
  const upstream = createUpstream({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1`, apiKey: 'k', connections: 2, headersTimeoutMs: 5000, bodyTimeoutMs: 5000 })
  t.teardown(() => upstream.pool.destroy())
  const stalled = Buffer.alloc(64 * 1024 * 1024, 0x61) // far more than the kernel's socket buffers
  t.equal(upstream.writing(stalled), false, 'never written')
  const res = await upstream.pool.request({ method: 'POST', path: '/api/v1/stall', body: stalled })
  t.equal(await res.body.text(), '{}', 'answered in full')
  t.equal(upstream.writing(stalled), true, 'the body is still being written')
  // Another body, on the pool's other connection, is taken in full while the first still waits.
  const taken = Buffer.alloc(4 * 1024 * 1024, 0x62)
  const other = await upstream.pool.request({ method: 'POST', path: '/api/v1/read', body: taken })
  t.equal(await other.body.text(), '{}')
  const deadline0 = Date.now() + 5000
  while (upstream.writing(taken) && Date.now() < deadline0) await new Promise((r) => setTimeout(r, 10))
  t.equal(upstream.writing(taken), false, 'a body its socket has taken is free')
  t.equal(upstream.writing(stalled), true, 'while the stalled one is still held')
  for (const s of sockets) s.destroy()
  const deadline = Date.now() + 5000
  while (upstream.writing(stalled) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  t.equal(upstream.writing(stalled), false, 'a closed socket writes nothing more')
})
