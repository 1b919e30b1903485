import t from 'tap'
import { existsSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createHash } from 'node:crypto'
import { request } from 'undici'
import type { Browser, Page } from 'playwright-core'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'

// The usage page's "Recent changes": the audit trail as the API gives it, newest first, every
// value shown as text (a user id holding markup stays text), older pages on request, and a
// forgotten user appearing by pseudonym only.

const CHROMIUM = '/usr/bin/chromium'
const ADMIN_KEY = 'admin-key-0123456789abcdef'
const AUTH = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
const PRINT = createHash('sha256').update(ADMIN_KEY).digest('hex').slice(0, 12)
const HOSTILE = '<img src=x onerror="window.__pwned=1">'
const shots = join(dirname(fileURLToPath(import.meta.url)), '..', '.tap', 'screenshots')

if (!existsSync(CHROMIUM)) {
  t.test('the audit trail on the /admin/ page in Chromium', { skip: `${CHROMIUM} is missing; install the Debian package "chromium"` }, async () => {})
} else {
  let fake: FakeOpenRouter
  let db: TestDb
  let on: Started
  let browser: Browser
  let page: Page

  t.before(async () => {
    fake = await new FakeOpenRouter().start()
    db = await createTestDb()
    on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, ORG_BUDGET_USD: '500' }))
    const { chromium } = await import('playwright-core')
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'] })
    page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage()
    mkdirSync(shots, { recursive: true })
  })
  t.teardown(async () => {
    await browser?.close()
    await on?.sidecar.stop('test end')
    await fake?.close()
    await db?.drop()
  })

  const put = async (path: string, body: unknown) => {
    const r = await request(on.url + path, { method: 'PUT', headers: AUTH, body: JSON.stringify(body) })
    await r.body.dump()
    return r.statusCode
  }

  const rows = () => page.$$eval('#audit-table tbody tr', (trs) => trs.map((tr) => [...tr.children].map((c) => c.textContent)))

  t.test('recent changes: newest first, as text, older ones on request, forgotten users by pseudonym', async (t) => {
    for (let i = 0; i < 22; i++) t.equal(await put(`/admin/v1/budgets/users/${encodeURIComponent(`pupil-${i}`)}`, { limit_usd: '2', period: 'week' }), 200)
    t.equal(await put(`/admin/v1/budgets/users/${encodeURIComponent(HOSTILE)}`, { limit_usd: '1.5', period: 'day' }), 200)

    await page.goto(`${on.url}/admin/`)
    await page.fill('#key', ADMIN_KEY)
    await page.keyboard.press('Enter')
    await page.waitForSelector('#audit-table tbody tr')
    let shown = await rows()
    t.equal(shown.length, 20, 'one page of 20')
    t.same(shown[0].slice(1), [`admin key ${PRINT}`, 'budget.set', `budgets/users/${HOSTILE}`, '—', 'limit_usd: 1.5, period: day'], 'the newest first, markup as text')
    t.equal(await page.evaluate(() => (window as any).__pwned), undefined, 'nothing in the trail ran')
    t.equal(await page.$$eval('#audit-table img', (x) => x.length), 0, 'no element made from a value')
    t.notOk(String(await page.textContent('#audit-table')).includes(ADMIN_KEY), 'the key is never shown')
    await page.screenshot({ path: join(shots, 'admin-audit.png'), fullPage: true })

    t.ok(await page.isVisible('#audit-more'), 'older changes are a click away')
    await page.click('#audit-more')
    await page.waitForFunction(() => document.querySelectorAll('#audit-table tbody tr').length === 24)
    shown = await rows()
    t.same(shown.at(-1)!.slice(1, 4), ['environment', 'budget.set', 'budgets/organization'], 'the oldest: the environment\'s budget at boot')
    t.notOk(await page.isVisible('#audit-more'), 'nothing older')

    const del = await request(on.url + `/admin/v1/users/${encodeURIComponent('pupil-3')}`, { method: 'DELETE', headers: AUTH })
    const body = await del.body.json() as { user_id: string }
    t.equal(del.statusCode, 200)
    await page.reload()
    await page.waitForSelector('#audit-table tbody tr')
    shown = await rows()
    t.same(shown[0].slice(1, 4), [`admin key ${PRINT}`, 'user.forgotten', `users/${body.user_id}`])
    t.notOk(JSON.stringify(shown).includes('pupil-3'), 'the forgotten id is nowhere on the page')
    await page.click('#audit-more')
    await page.waitForFunction(() => document.querySelectorAll('#audit-table tbody tr').length === 25)
    t.notOk(JSON.stringify(await rows()).includes('pupil-3'), 'not on older pages either')
    t.ok(JSON.stringify(await rows()).includes(`budgets/users/${body.user_id}`), 'her budget line names the pseudonym')
  })
}
