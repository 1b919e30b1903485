import t from 'tap'
import { connect } from 'node:net'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// Requests Node's parser refuses before any route runs still get OpenAI's error shape.

let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter().start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

function talk (bytes: string): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect(Number(new URL(s.url).port), '127.0.0.1', () => sock.write(bytes))
    let text = ''
    sock.on('data', (c) => { text += c })
    sock.on('close', () => resolve(text))
    sock.on('error', () => {})
  })
}

function body (text: string): { error: { message: string, type: string, code: string } } {
  return JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))
}

t.test('oversized headers: 431 with an OpenAI-style error', async (t) => {
  const text = await talk(`GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(100_000)}\r\n\r\n`)
  t.match(text, /^HTTP\/1\.1 431 /)
  t.match(body(text), { error: { type: 'invalid_request_error', code: 'headers_too_large' } })
})

t.test('a request line that is not HTTP: 400 with an OpenAI-style error', async (t) => {
  const text = await talk('GARBAGE\0 / NOPE\r\n\r\n')
  t.match(text, /^HTTP\/1\.1 400 /)
  t.match(body(text), { error: { type: 'invalid_request_error', code: 'malformed_request' } })
})

t.test('conflicting framing headers: 400 with an OpenAI-style error, nothing upstream', async (t) => {
  const before = fake.requests.length
  const text = await talk('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n')
  t.match(text, /^HTTP\/1\.1 400 /)
  t.match(body(text), { error: { code: 'malformed_request' } })
  t.equal(fake.requests.length, before)
})
