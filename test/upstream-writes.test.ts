import t from 'tap'
import { createServer, type Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import { createUpstream } from '../src/proxy/upstream.js'

// BodyMemory reuses a request body's buffer only while no upstream socket has a write pending
// (src/proxy/body-memory.ts): an upstream that answers before it has read the whole body leaves
// the rest of that body in the process, still pointing into the buffer.

t.test('writesPending is true while an upstream has not taken a body it already answered', async (t) => {
  const sockets: Socket[] = []
  // Answers as soon as the request line arrives, keeps the connection, and reads nothing more.
  const server = createServer((socket) => {
    sockets.push(socket)
    socket.once('data', () => {
      socket.pause()
      socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}')
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => { for (const s of sockets) s.destroy(); server.close() })
  const upstream = createUpstream({ baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/v1`, apiKey: 'k', connections: 2, headersTimeoutMs: 5000, bodyTimeoutMs: 5000 })
  t.teardown(() => upstream.pool.destroy())
  t.equal(upstream.writesPending(), false, 'nothing written yet')
  const body = Buffer.alloc(64 * 1024 * 1024, 0x61) // far more than the kernel's socket buffers
  const res = await upstream.pool.request({ method: 'POST', path: '/api/v1/x', body })
  t.equal(await res.body.text(), '{}', 'answered in full')
  t.equal(upstream.writesPending(), true, 'the body is still being written')
  for (const s of sockets) s.destroy()
  const deadline = Date.now() + 5000
  while (upstream.writesPending() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10))
  t.equal(upstream.writesPending(), false, 'a closed socket writes nothing more')
})
