import t from 'tap'
import { createServer, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { request } from 'undici'
import { createTestDb, type TestDb } from './support/db.js'
import { LogSink } from './support/log-sink.js'
import { createLogger } from '../src/lib/log.js'
import { loadConfig } from '../src/config/config.js'
import { migrate } from '../src/db/migrate.js'
import { upsertOrganization } from '../src/db/organizations.js'
import type { UsageRecord } from '../src/usage/ledger/record.js'
import { Limits } from '../src/budgets/limits.js'
import { PriceList } from '../src/budgets/prices.js'
import { setBudget } from '../src/budgets/store.js'

// An admission that throws after the rate limit let it in (the budget half: the estimate, the
// price list) answers that request 500, and gives back the concurrency slot it took: otherwise
// the user is refused 429 from then on, though nothing of theirs is running.

const ORG = 'mai_client_admission_throws'
const SQL_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'sql')
const config = loadConfig({ OPENROUTER_API_KEY: 'sk-or-v1-test-key-0123456789', OPENROUTER_EXTERNAL_USER: ORG, ORGANIZATION_NAME: 'Throws', BUDGET_REFRESH_MS: '60000', USER_MAX_CONCURRENT: '1' }).limits
const log = createLogger('debug', new LogSink())
let db: TestDb
let server: Server
let url: string
let handler: (res: ServerResponse) => void = (res) => res.end()

t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, SQL_DIR)
  await upsertOrganization(db.sql, { id: ORG, name: 'Throws', markupPercent: '0' }, 'sk-or-v1-test-key-0123456789')
  await setBudget(db.sql, ORG, 'user', 'alice', '100', 'month')
  server = createServer((_req, res) => handler(res))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})
t.teardown(async () => {
  server.close()
  await db.drop()
})

function rec (user: string): UsageRecord {
  return {
    eventId: randomUUID(), generationId: null, organizationId: ORG, userId: user, externalUserId: `x-${user}`, endpoint: 'chat/completions',
    model: 'm/priced', servedModel: null, provider: null, streamed: false, status: 200, outcome: 'ok', finishReason: null, errorMessage: null,
    usageSource: 'none', promptTokens: null, completionTokens: null, totalTokens: null, cachedTokens: null, reasoningTokens: null,
    costUsd: null, upstreamCostUsd: null, isByok: null, markupPercent: '0', latencyMs: null, ttfbMs: null, chatId: null, kind: 'api', messageId: null,
    createdAt: new Date().toISOString(),
  } as UsageRecord
}

t.test('the budget half throws: the rate slot is given back', async (t) => {
  let broken = true
  const real = new PriceList(async () => ({ status: 200, body: JSON.stringify({ data: [{ id: 'm/priced', pricing: { prompt: '0.000001', completion: '0.000002' } }] }) }), '60', log)
  await real.start()
  t.teardown(() => real.stop())
  const prices = Object.assign(Object.create(real) as PriceList, {
    price (model: string | null) { if (broken) throw new Error('price list broke'); return real.price(model) },
  })
  const limits = new Limits({ sql: db.sql, record: () => {}, log, config, organizationId: ORG, markupPercent: '0', prices, alerts: null })
  t.teardown(() => limits.close())
  await limits.refresh()
  const outcome = async (): Promise<string> => {
    const seen = new Promise<string>((resolve) => {
      handler = (res) => {
        limits.admit(res, rec('alice'), Buffer.from('{"x":""}'), 10).then(
          (a) => { if (a) { a.done(); res.end('admitted') }; resolve(a ? 'admitted' : 'refused') },
          () => { res.end('threw'); resolve('threw') })
      }
    })
    await request(url).then((r) => r.body.text())
    return seen
  }
  t.equal(await outcome(), 'threw')
  broken = false
  t.equal(await outcome(), 'admitted', 'the next request of the same user is not refused for a slot nobody holds')
})
