import t from 'tap'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// What a row says must be what OpenRouter charged, even when the stream dies early, the numbers
// are absurd, or the digits cannot be read back: each case here ends in a row billing can use.

let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter(11).start()
  db = await createTestDb({ migrated: true })
  s = await startSidecar(baseEnv(fake, db.url))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

const json = { 'content-type': 'application/json' }
const rowOf = async (user: string) => (await rowsSoon(() => db.sql`select *, cost_usd::text as cost_text from usage_events where user_id = ${user}`))[0]
const until = async (cond: () => boolean, timeoutMs: number) => {
  const deadline = Date.now() + timeoutMs
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  return cond()
}

t.test('an aborted /messages stream (message_start had tokens, no cost) is reconciled and billed', async (t) => {
  const ac = new AbortController()
  const res = await request(s.url + '/v1/messages', {
    method: 'POST', headers: json, signal: ac.signal, body: JSON.stringify({ model: 'fake/slow', stream: true, max_tokens: 100, messages: [], user: 'msg-abort' }),
  })
  let got = ''
  try {
    for await (const c of res.body) {
      got += c.toString()
      if ((got.match(/content_block_delta/g) ?? []).length >= 6) { ac.abort(); break }
    }
  } catch { /* aborted */ }
  t.match(got, /"type":"message_start".*"input_tokens"/s, 'partial usage was seen inline')
  const row = await rowOf('msg-abort')
  const g = fake.generations.get(row.generation_id)!
  t.equal(g.cancelled, true)
  t.same([row.outcome, row.usage_source, row.cost_text, row.completion_tokens, row.prompt_tokens], ['client_aborted', 'generation', g.cost, g.completionTokens, g.promptTokens])
})

t.test('a stream that dies after partial usage is reconciled too', async (t) => {
  const res = await request(s.url + '/v1/messages', { method: 'POST', headers: json, body: JSON.stringify({ model: 'fake/cut-stream', stream: true, messages: [], user: 'msg-cut' }) })
  t.match(await res.body.text(), /message_start/, 'the chunked answer ends cleanly after what arrived')
  const row = await rowOf('msg-cut')
  const g = fake.generations.get(row.generation_id)!
  t.same([row.outcome, row.usage_source, row.cost_text], ['incomplete', 'generation', g.cost])
})

t.test('digits that cannot be read back: the cost comes from /generation, never from a double', async (t) => {
  const r = await request(s.url + '/v1/chat/completions', { method: 'POST', headers: json, body: JSON.stringify({ model: 'fake/escaped-cost', messages: [], user: 'escaped' }) })
  t.match(await r.body.text(), /"co\\u0073t":/)
  const row = await rowOf('escaped')
  const g = fake.generations.get(row.generation_id)!
  t.same([row.outcome, row.usage_source, row.cost_text], ['ok', 'generation', g.cost])
})

t.test('absurd upstream numbers: the row is kept, the number left out and named in anomaly', async (t) => {
  for (const [model, field, pattern] of [
    ['fake/negative-cost', 'cost_usd', /costUsd -0\.0042 is negative/],
    ['fake/huge-cost', 'cost_usd', /costUsd 1000000000000000\S*\(401 chars\) has 401 characters/],
    ['fake/huge-tokens', 'prompt_tokens', /promptTokens 3000000000 out of range/],
  ] as const) {
    const user = `absurd-${model.slice(5)}`
    const r = await request(s.url + '/v1/chat/completions', { method: 'POST', headers: json, body: JSON.stringify({ model, messages: [], user }) })
    t.equal(r.statusCode, 200)
    await r.body.dump()
    const row = await rowOf(user)
    t.ok(row, `${model}: the row exists`)
    t.equal(row?.[field], null, `${model}: ${field} not stored`)
    t.match(row?.anomaly, pattern, `${model}: billing sees why`)
  }
  const tokens = await rowOf('absurd-huge-tokens')
  t.equal(tokens.cost_text, fake.generations.get(tokens.generation_id)!.cost, 'the sane numbers of that row are kept')
  t.notOk(existsSync(join(s.dataDir, 'rejected.jsonl')), 'nothing set aside')
})

t.test('the client\'s accept-encoding never travels upstream (the tap must read plain bytes)', async (t) => {
  const r = await request(s.url + '/v1/chat/completions', { method: 'POST', headers: { ...json, 'accept-encoding': 'gzip, br' }, body: JSON.stringify({ model: 'fake/ok', messages: [], user: 'enc' }) })
  await r.body.dump()
  t.notMatch(fake.requests.at(-1)!.headers['accept-encoding'] ?? '', /gzip|br/)
})

t.test('a stream whose client left before the generation was named is aborted upstream all the same', async (t) => {
  const res = await request(s.url + '/v1/chat/completions', { method: 'POST', headers: json, body: JSON.stringify({ model: 'fake/endless-anon', stream: true, messages: [], user: 'anon-leaver' }) })
  for await (const _ of res.body) break // the first comment, then hang up
  res.body.destroy()
  const g = [...fake.generations.values()].find((x) => x.model === 'fake/endless-anon')!
  // The sidecar waits 10 s for a generation id before giving up on it: an endless stream ends only by that abort.
  t.ok(await until(() => g.cancelled, 20_000), 'upstream was aborted')
  const row = await rowOf('anon-leaver')
  t.same([row.outcome, row.generation_id], ['client_aborted', null])
})
