import t from 'tap'
import { randomBytes, randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb } from './support/db.js'
import { baseEnv, LogSink, startSidecar } from './support/sidecar.js'
import { createLogger } from '../src/lib/log.js'
import { migrate } from '../src/db/migrate.js'
import { Ledger } from '../src/usage/ledger/ledger.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'

// An id or model longer than a btree index entry holds (2704 bytes, incompressible) made the
// budget reservation fail (served WITHOUT a spend check under BUDGET_FAIL_MODE=open, past a $0
// user budget) and its row wedged the ledger for every user (SQLSTATE 54000, retried forever).
// Such ids and models are refused at the edge; a row Postgres cannot index is set aside.

const long = (): string => randomBytes(3000).toString('base64') // 4000 characters

t.test('a user id or model too long to index is refused before anything goes upstream; others are served and their rows land', async (t) => {
  const fake = await new FakeOpenRouter(21).start()
  const db = await createTestDb({ migrated: true })
  const s = await startSidecar(baseEnv(fake, db.url, { USER_BUDGET_USD: '0', SHUTDOWN_GRACE_MS: '200' }))
  t.teardown(async () => { await s.sidecar.stop('test end'); await fake.close(); await db.drop() })
  const send = async (body: Record<string, unknown>, headers: Record<string, string> = {}) => {
    const r = await request(`${s.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'fake/ok', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }], ...body }),
    })
    return { status: r.statusCode, body: await r.body.json() as { error?: { code: string, message: string } } }
  }
  const viaBody = await send({ user: long() })
  t.equal(viaBody.status, 401, 'a 4000-character body user is refused')
  t.match(viaBody.body.error?.message, /longer than 256 characters/)
  t.equal((await send({}, { 'x-openwebui-user-id': long() })).status, 401, 'so is the same in the identity header')
  t.equal((await send({ user: 'x'.repeat(256) })).status, 402, 'an id of 256 characters is a user: the $0 budget refuses it')
  const model = await send({ model: long() }, { 'x-openwebui-user-id': 'alice' })
  t.equal(model.status, 400, 'a 4000-character model is refused')
  t.equal(model.body.error?.code, 'invalid_model')
  t.equal(fake.generations.size, 0, 'nothing reached OpenRouter')
  t.notMatch(s.logs.text, /WITHOUT a spend check/, 'no admission failed open')
  t.equal((await send({ user: '' }, { 'x-openwebui-user-id': '' })).status, 200, 'the organization is still served')
  for (;;) {
    const [{ n }] = await db.sql<{ n: number }[]>`select count(*)::int as n from usage_events where outcome = 'ok'`
    if (n === 1) break
    await new Promise((r) => setTimeout(r, 20))
  }
  t.pass('its row landed')
})

t.test('a row whose value is too large for an index is set aside; the rows behind it land', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  await migrate(db.sql, 'sql')
  const ORG = 'mai_client_long'
  await db.sql`insert into organizations (id, name) values (${ORG}, 'Long Org')`
  const rejectedPath = join(mkdtempSync(join(tmpdir(), 'ledger-')), 'rejected.jsonl')
  const ledger = new Ledger(db.sql, null, createLogger('info', new LogSink()), { batchSize: 10, flushMs: 5, rejectedPath })
  t.teardown(() => ledger.close())
  const rec = (i: number, model: string): UsageRecord => ({
    eventId: randomUUID(), generationId: `gen-long-${i}`, organizationId: ORG, userId: 'u', externalUserId: `${ORG}_user_x`,
    endpoint: 'chat/completions', model, servedModel: 'm', provider: 'p', streamed: false, status: 200, outcome: 'ok',
    finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: i, completionTokens: 1, totalTokens: i + 1,
    cachedTokens: 0, reasoningTokens: 0, costUsd: '0.000001', upstreamCostUsd: null, isByok: false,
    markupPercent: '10', latencyMs: 1.5, ttfbMs: 0.5, chatId: null, kind: 'api', messageId: null, createdAt: new Date().toISOString(),
  } as UsageRecord)
  const poison = rec(0, long())
  for (const r of [poison, rec(1, 'm'), rec(2, 'm')]) ledger.record(r)
  t.ok(await ledger.drain(10_000), 'the queue is not wedged by the row')
  const rows = await db.sql`select generation_id from usage_events order by prompt_tokens`
  t.same(rows.map((r) => r.generation_id), ['gen-long-1', 'gen-long-2'])
  const set = readFileSync(rejectedPath, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  t.same(set.map((x) => x.record.eventId), [poison.eventId], 'the row is set aside, with its reason')
  t.match(set[0].reason, /^54000/)
})
