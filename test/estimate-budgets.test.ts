import t from 'tap'
import { readFileSync } from 'node:fs'
import { Agent, request } from 'undici'
import { countTokens as cl100k } from 'gpt-tokenizer/encoding/cl100k_base'
import { countTokens as o200k } from 'gpt-tokenizer/encoding/o200k_base'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb, rowsSoon, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { setBudget } from '../src/budgets/store.js'

// Estimates through the sidecar, with budgets that bind: an image is priced as an image, not as
// its base64; a request's completion is no more than the model can return; and CJK prompts,
// which outrun bytes / 4, never let concurrent requests overspend a user budget. The fake's
// fake/vision model is priced like a real one: $3 / M prompt tokens, $15 / M completion tokens,
// $0.0048 an image, at most 8192 completion tokens.

const ORG = 'mai_client_63a4eb6d' // baseEnv's
let fake: FakeOpenRouter
let db: TestDb
let s: Started

t.before(async () => {
  fake = await new FakeOpenRouter(5).start()
  db = await createTestDb({ migrated: true })
  // An organization budget from the environment: boot has loaded /models before it is ready.
  s = await startSidecar(baseEnv(fake, db.url, {
    ORG_BUDGET_USD: '1000', ORG_BUDGET_PERIOD: 'month', LOG_LEVEL: 'warn',
    // An admission that gave up waiting would be served unchecked (BUDGET_FAIL_MODE=open), which
    // the embedded database's one session can cause under 48 at once: it waits instead.
    BUDGET_DB_TIMEOUT_MS: '60000',
  }))
})
t.teardown(async () => {
  await s?.sidecar.stop('test end')
  await fake?.close()
  await db?.drop()
})

/** A user's daily budget, written where every admission reads it. */
async function budget (user: string, limit: string): Promise<void> {
  await setBudget(db.sql, ORG, 'user', user, limit, 'day')
}

async function chat (user: string, body: Record<string, unknown>, dispatcher?: Agent): Promise<number> {
  const res = await request(s.url + '/v1/chat/completions', {
    method: 'POST',
    dispatcher,
    headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user },
    body: JSON.stringify({ model: 'fake/vision', ...body }),
  })
  await res.body.dump()
  return res.statusCode
}

async function spent (user: string): Promise<string> {
  const rows = await db.sql<Array<{ b: string }>>`select billed_cost_usd::text as b from usage_events where user_id = ${user} and billed_cost_usd is not null`
  return sumDecimals(rows.map((r) => r.b))
}

/** a <= b for decimal strings, exactly. */
function le (a: string, b: string): boolean {
  const units = (v: string) => { const [i, f = ''] = v.split('.'); return BigInt(i + f.padEnd(30, '0').slice(0, 30)) }
  return units(a) <= units(b)
}

// A 4 MB PNG, as a client sends it: a data URL in an image_url part.
const png = Buffer.alloc(3 * 1024 * 1024, 7)
Buffer.from('89504e470d0a1a0a', 'hex').copy(png)
const IMAGE_URL = 'data:image/png;base64,' + png.toString('base64')

t.test('a 4 MB image costs an image: a user with $1 a day is admitted', async (t) => {
  t.ok(IMAGE_URL.length > 4_000_000, 'the image is 4 MB of base64')
  await budget('painter', '1')
  const status = await chat('painter', { messages: [{ role: 'user', content: [{ type: 'text', text: 'What is in this picture?' }, { type: 'image_url', image_url: { url: IMAGE_URL } }] }] })
  t.equal(status, 200, 'admitted (bytes / 4 would have reserved about $3)')
  // The same bytes as text are not an image: a $0.10 budget admits the image and refuses the text.
  await budget('frugal', '0.10')
  t.equal(await chat('frugal', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: IMAGE_URL } }] }] }), 200, 'an image fits in $0.10')
  t.equal(await chat('frugal', { messages: [{ role: 'user', content: IMAGE_URL }] }), 402, 'its base64 as text does not')
  t.equal(await chat('frugal', { input: [{ role: 'user', content: [{ type: 'input_image', image_url: IMAGE_URL }] }] }), 200, 'a Responses-shaped image fits too')
})

t.test('the completion estimate is no more than top_provider.max_completion_tokens', async (t) => {
  // 100,000 completion tokens would be $1.50; the model returns at most 8192 ($0.12).
  await budget('verbose', '0.2')
  t.equal(await chat('verbose', { max_tokens: 100_000, messages: [{ role: 'user', content: 'Write a long story.' }] }), 200)
  await budget('terse', '0.01')
  t.equal(await chat('terse', { max_tokens: 100_000, messages: [{ role: 'user', content: 'Write a long story.' }] }), 402, 'while 8192 tokens still do not fit in $0.01')
})

t.test('concurrent CJK prompts never overspend a user budget', async (t) => {
  // OpenRouter charges what the tokenizer counts: the larger of the two encodings, plus 4 tokens
  // a message, at $3 / M, and 10 completion tokens at $15 / M. Estimates are upper bounds and
  // nothing is charged above them, so spend ends at or under the limit.
  const text = (name: string) => readFileSync(new URL(`./fixtures/tokens/${name}.txt`, import.meta.url), 'utf8')
  const prompts = [text('chinese'), text('japanese'), text('korean'), text('adversarial-cjk-rare').slice(0, 600), text('chinese-traditional')]
  fake.costOf = (req) => {
    const content = (req.messages as Array<{ content: string }>).map((m) => m.content).join('')
    const tokens = Math.max(cl100k(content), o200k(content)) + 4 * req.messages.length
    return sumDecimals([(tokens * 0.000003).toFixed(9), '0.00015'])
  }
  t.teardown(() => { fake.costOf = null })
  const LIMIT = '0.05'
  await budget('cjk', LIMIT)
  const agent = new Agent({ connections: 48 })
  t.teardown(() => agent.close())
  const statuses = await Promise.all(Array.from({ length: 48 }, (_, i) =>
    chat('cjk', { max_tokens: 10, messages: [{ role: 'user', content: prompts[i % prompts.length] + ` (${i})` }] }, agent)))
  const served = statuses.filter((x) => x === 200).length
  t.ok(served > 0, `served ${served}`)
  t.equal(statuses.filter((x) => x === 402).length, 48 - served, 'the rest were refused by the budget')
  await rowsSoon(async () => {
    const [r] = await db.sql`select count(*)::int as n from usage_events where user_id = 'cjk' and billed_cost_usd is not null`
    return r.n === served ? [r] : []
  }, 15_000)
  const total = await spent('cjk')
  const metrics = await (await request(s.url + '/metrics', { dispatcher: agent })).body.text()
  t.match(metrics, /^usage_proxy_budget_fail_open_total(\{[^}]*\})? 0$/m, 'no admission was served without a spend check')
  t.ok(le(total, LIMIT), `spent ${total} <= limit ${LIMIT}`)
  t.ok(le('0.02', total), `and the budget was used (${total})`)
})
