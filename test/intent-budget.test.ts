import t from 'tap'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { FakeOpenRouter, sumDecimals } from './support/fake-openrouter.js'
import { createTestDb } from './support/db.js'
import { TEST_KEY } from './support/test-key.js'
import { faultEnv, freePort, spawnSidecar } from './support/child.js'
import { sendAs, until } from './support/crash-cycle.js'

// NEEDS BUDGETSQL (coordinator: check after merging "budgetsql"): settlement counts an
// interrupted row with no generation id at its estimated_cost_usd. Before that merge the spend
// asserted here reads 0 and this file fails; it asserts through the budget API only, so it holds
// whichever way settlement is written.
//
// Requests in flight when the sidecar is SIGKILLed, whose generations OpenRouter billed and the
// sidecar never saw named: after the restart the budgets count them at their estimates (nothing
// left held, nothing forgotten).

let fake: FakeOpenRouter
t.before(async () => { fake = await new FakeOpenRouter(77).start() })
t.teardown(async () => { await fake.close() })

const ORG = 'mai_client_intent_budget'
const ADMIN_KEY = 'admin-key-intent-0123456789abcdef'

interface Budget { scope: string, user_id: string | null, spent_usd: string, reserved_usd: string }

t.test('interrupted requests count toward the organization and user budgets at their estimates after the restart', async (t) => {
  const db = await createTestDb({ migrated: true })
  t.teardown(() => db.drop())
  const dataDir = mkdtempSync(join(tmpdir(), 'intent-budget-'))
  const port = await freePort()
  const env = faultEnv({ org: ORG, name: 'Intent Budget Inc', key: TEST_KEY, databaseUrl: db.url, upstream: fake.baseUrl, dataDir },
    { LOG_LEVEL: 'warn', ORG_BUDGET_USD: '1000', USER_BUDGET_USD: '100', ADMIN_API_KEY: ADMIN_KEY })
  let child = spawnSidecar(env, port)
  t.teardown(async () => { child.proc.kill('SIGKILL'); await child.exited })
  await child.waitReady()
  const budgets = async (): Promise<Budget[]> => {
    const r = await request(`${child.url}/admin/v1/budgets/users/alice`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
    return ((await r.body.json()) as { data: Budget[] }).data
  }
  const spentOf = (bs: Budget[], scope: string) => bs.find((b) => b.scope === scope)!
  fake.holdAt = 'headers'
  for (let i = 0; i < 4; i++) void sendAs(child.url, i < 3 ? 'alice' : 'bob', i % 2 === 1)
  await until('4 answers held', () => fake.held === 4)
  const held = await budgets()
  t.equal(sumDecimals([spentOf(held, 'organization').spent_usd]), '0', 'nothing spent yet')
  child.proc.kill('SIGKILL')
  await child.exited
  fake.release()
  child = spawnSidecar(env, port)
  await child.waitReady()
  let rows: Array<{ user_id: string, estimate: string }> = []
  await until('4 interrupted rows', async () => (rows = await db.sql`select user_id, estimated_cost_usd::text as estimate from usage_events
    where outcome = 'interrupted' and generation_id is null`).length === 4)
  t.ok(rows.every((r) => r.estimate !== null), 'each carries its estimate')
  const all = sumDecimals(rows.map((r) => r.estimate))
  const alice = sumDecimals(rows.filter((r) => r.user_id === 'alice').map((r) => r.estimate))
  const after = await budgets()
  t.equal(sumDecimals([spentOf(after, 'organization').spent_usd]), all, 'the organization budget counts every interrupted request at its estimate')
  t.equal(sumDecimals([spentOf(after, 'organization').reserved_usd]), '0', 'and holds no reservation for them any more')
  t.equal(sumDecimals([spentOf(after, 'default-user').spent_usd]), alice, "alice's budget counts her three at their estimates")
  t.equal(sumDecimals([spentOf(after, 'default-user').reserved_usd]), '0')
})
