import t from 'tap'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb } from './support/db.js'
import { baseEnv, startSidecar } from './support/sidecar.js'
import { TcpRelay } from './support/tcp-relay.js'

// Postgres stops answering while apps use their keys. With BUDGET_FAIL_MODE=closed the keys read
// last stop being trusted after a few intervals (503, so a revocation made meanwhile cannot be
// missed), a key the replica does not know yet cannot be looked up (503, never "unknown"), and
// both work again once Postgres answers. With the default (open), the keys read last keep serving.

const ADMIN_KEY = 'admin-key-0123456789abcdef'
const admin = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(17).start() })
t.teardown(() => fake.close())

async function chat (base: string, key: string) {
  const res = await request(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: 'fake/ok', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }),
  })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? null : JSON.parse(text) }
}

for (const mode of ['closed', 'open'] as const) {
  t.test(`BUDGET_FAIL_MODE=${mode}: keys while Postgres does not answer`, async (t) => {
    const db = await createTestDb({ migrated: true })
    const relay = new TcpRelay(db.port)
    await relay.reserve()
    await relay.open()
    const s = await startSidecar(baseEnv(fake, `${relay.url}/${db.name}`, {
      ADMIN_API_KEY: ADMIN_KEY, PROXY_API_KEY: 'proxy-key-for-the-chat-app', SHUTDOWN_GRACE_MS: '200',
      // Long enough for a lookup on a busy embedded database to answer; short enough that the
      // outage below shows within seconds.
      BUDGET_FAIL_MODE: mode, BUDGET_DB_TIMEOUT_MS: '2000', API_KEYS_REFRESH_MS: '100',
    }))
    t.teardown(async () => { relay.resume(); await s.sidecar.stop('test end'); await relay.cut(); await db.drop() })
    const made = await request(`${s.url}/admin/v1/keys`, { method: 'POST', headers: admin, body: JSON.stringify({ name: 'outage' }) })
    const k = await made.body.json() as { key: string }
    t.equal((await chat(s.url, k.key)).status, 200)
    const brief = await request(`${s.url}/admin/v1/keys`, { method: 'POST', headers: admin, body: JSON.stringify({ name: 'brief', expires_at: new Date(Date.now() + 1500).toISOString() }) })
    const b = await brief.body.json() as { key: string }
    t.equal((await chat(s.url, b.key)).status, 200)

    relay.pause()
    const stranger = await chat(s.url, `upk_${'C'.repeat(43)}`)
    t.equal(stranger.status, 503, 'a key it does not know cannot be looked up: retry, not "unknown"')
    t.match(stranger.body, { error: { code: 'key_check_unavailable' } })
    if (mode === 'closed') {
      let r
      do { r = await chat(s.url, k.key) } while (r.status === 200)
      t.equal(r.status, 503, 'once the keys read last are too old, a key request is not served')
      t.match(r.body, { error: { type: 'service_unavailable', code: 'key_check_unavailable' } })
    } else {
      while (!s.logs.text.includes('could not re-read the keys')) await new Promise((r) => setTimeout(r, 25))
      t.equal((await chat(s.url, k.key)).status, 200, 'the keys read last keep serving')
      // Expiry needs no read: a key that expires while Postgres is away is refused all the same.
      const deadline = Date.now() + 20_000
      let r
      do { r = await chat(s.url, b.key) } while (r.status === 200 && Date.now() < deadline)
      t.equal(r.status, 401, 'a key that expired meanwhile is refused without a read')
      t.match(r.body, { error: { message: /expired/ } })
    }
    t.equal((await chat(s.url, 'proxy-key-for-the-chat-app')).status, 200, 'PROXY_API_KEY needs no database')

    relay.resume()
    let back
    do { back = await chat(s.url, k.key) } while (back.status !== 200)
    t.equal(back.status, 200, 'served again once Postgres answers')
    t.equal((await chat(s.url, `upk_${'C'.repeat(43)}`)).status, 401, 'and a made-up key is known to be unknown')
  })
}
