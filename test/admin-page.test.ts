import t from 'tap'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Browser, Page } from 'playwright-core'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, startSidecar, type Started } from './support/sidecar.js'
import { seedLedger } from './support/seed.js'
import { parseCsv } from './support/csv.js'
import { formatUsd, sameDecimal, sumDecimals } from '../src/lib/decimal.js'

// The /admin/ page in a real browser: Debian's Chromium driven by playwright-core (nothing is
// downloaded). It signs in, reads the numbers the page shows and checks them against the
// database, downloads a CSV, and takes screenshots into .tap/screenshots/.

const CHROMIUM = '/usr/bin/chromium'
const ADMIN_KEY = 'admin-key-0123456789abcdef'
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const shots = join(root, '.tap', 'screenshots')

if (!existsSync(CHROMIUM)) {
  t.test('the /admin/ page in Chromium', { skip: `${CHROMIUM} is missing; install the Debian package "chromium" (apt-get install chromium)` }, async () => {})
} else {
  let fake: FakeOpenRouter
  let db: TestDb
  let on: Started
  let browser: Browser
  let page: Page
  const now = new Date()
  const monthStart = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().slice(0, 10)
  const nextMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString().slice(0, 10)

  t.before(async () => {
    fake = await new FakeOpenRouter().start()
    db = await createTestDb()
    on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }))
    await seedLedger(db.sql, { rows: 800, from: monthStart, days: now.getUTCDate() - 1 + now.getUTCHours() / 24 })
    const { chromium } = await import('playwright-core')
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    })
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } })
    page = await context.newPage()
    mkdirSync(shots, { recursive: true })
  })
  t.teardown(async () => {
    await browser?.close()
    await on?.sidecar.stop('test end')
    await fake?.close()
    await db?.drop()
  })

  const month = (sqlFilter: string, user?: string) => db.sql.unsafe<Array<{ billed: string, cost: string, requests: number, tokens: string }>>(`
    select coalesce(sum(billed_cost_usd), 0)::text as billed, coalesce(sum(cost_usd), 0)::text as cost, count(*)::int as requests,
           coalesce(sum(total_tokens), 0)::text as tokens
    from usage_events where created_at >= $1::timestamptz and created_at < $2::timestamptz ${sqlFilter}`, user ? [monthStart, nextMonth, user] : [monthStart, nextMonth])

  t.test('sign in with the keyboard; a wrong key is refused', async (t) => {
    await page.goto(`${on.url}/admin/`)
    await page.waitForSelector('#sign-in-view:not([hidden])')
    t.equal(await page.evaluate(() => document.activeElement?.id), 'key', 'the key field has focus')
    t.equal(await page.textContent('label[for=key]'), 'Admin key', 'the field is labelled')
    await page.keyboard.type('not-the-admin-key')
    await page.keyboard.press('Enter')
    await page.waitForFunction(() => document.getElementById('sign-in-error')?.textContent !== '')
    t.match(await page.textContent('#sign-in-error'), /not the admin key/)
    await page.fill('#key', ADMIN_KEY)
    await page.keyboard.press('Enter')
    await page.waitForSelector('#totals-billed [data-exact]')
    const cookies = await page.context().cookies()
    const c = cookies.find((x) => x.name === 'usage_proxy_admin')
    t.ok(c?.httpOnly, 'the key is kept in an HttpOnly cookie')
    t.equal(c?.sameSite, 'Strict')
    t.notMatch(page.url(), /admin-key/, 'never in the URL')
    t.equal(await page.evaluate(() => document.cookie), '', 'scripts cannot read it')
  })

  t.test('the totals and the users table equal the database to the cent', async (t) => {
    const [all] = await month('')
    t.ok(all.requests > 0)
    const exact = async (sel: string) => page.getAttribute(sel, 'data-exact')
    t.equal(await exact('#totals-requests [data-exact]'), String(all.requests))
    t.equal(await exact('#totals-tokens [data-exact]'), all.tokens)
    t.ok(sameDecimal((await exact('#totals-billed [data-exact]'))!, all.billed), `billed ${all.billed}`)
    t.ok(sameDecimal((await exact('#totals-cost [data-exact]'))!, all.cost))
    t.equal(await page.textContent('#totals-billed [data-exact]'), formatUsd(all.billed), 'shown rounded the same way')

    const rows = await page.$$eval('#users-table tbody tr', (trs) => trs.map((tr) => ({
      user: tr.querySelector('a[data-user]')?.getAttribute('data-user') ?? null,
      name: tr.querySelector('th')?.textContent ?? '',
      billed: tr.querySelectorAll('[data-exact]')[3]?.getAttribute('data-exact') ?? '',
      shown: tr.querySelectorAll('[data-exact]')[3]?.textContent ?? '',
    })))
    t.equal(rows.length, 4, 'three users and the requests without a user')
    for (const r of rows) {
      const [u] = r.user === null ? await month('and user_id is null') : await month('and user_id = $3', r.user)
      t.ok(sameDecimal(r.billed, u.billed), `${r.name}: ${r.billed} = ${u.billed}`)
      t.equal(r.shown, formatUsd(u.billed))
    }
    t.ok(rows.some((r) => r.name === 'Anna Müller'))
    const billed = rows.map((r) => Number(r.billed))
    t.same(billed, [...billed].sort((a, b) => b - a), 'sorted by spend, largest first')
    t.equal(await page.getAttribute('#users-table th:has(button:text("Billed"))', 'aria-sort'), 'descending')
    await page.screenshot({ path: join(shots, 'usage-page.png'), fullPage: true })
    await page.click('#users-table button:text("Billed")')
    t.equal(await page.getAttribute('#users-table th:has(button:text("Billed"))', 'aria-sort'), 'ascending')
    const after = await page.$$eval('#users-table tbody tr', (trs) => trs.map((tr) => tr.querySelectorAll('[data-exact]')[3]?.getAttribute('data-exact')))
    t.same(after.map(Number), [...billed].reverse(), 'one click sorts ascending')

    for (const id of ['models-table', 'tasks-table', 'outcomes-table', 'days-table']) t.ok(await page.$(`#${id} tbody tr`), `${id} has rows`)
    t.equal(await page.$$eval('#chart svg rect.bar', (r) => r.length), new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 0)).getUTCDate(), 'a bar slot for every day of the month')
  })

  t.test('CSV download of the users table adds up to sum(billed_cost_usd)', async (t) => {
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#users-table-csv')])
    const text = readFileSync((await download.path())!, 'utf8')
    const [header, ...rows] = parseCsv(text)
    t.equal(header[0], 'user')
    const [all] = await month('')
    t.ok(sameDecimal(sumDecimals(rows.map((r) => r[header.indexOf('billed_cost_usd')])), all.billed), 'CSV total = database')
    t.equal(rows.length, 4)
  })

  t.test('a user\'s page: daily spend, models and recent requests', async (t) => {
    await page.click('#users-table a[data-user="u-anna"]')
    await page.waitForSelector('#user-view:not([hidden]) #user-totals-billed [data-exact]')
    t.match(await page.textContent('#user-title'), 'Anna Müller (u-anna)')
    t.equal(await page.evaluate(() => document.activeElement?.id), 'user-title', 'focus moves to the new view')
    const [anna] = await month('and user_id = $3', 'u-anna')
    t.ok(sameDecimal((await page.getAttribute('#user-totals-billed [data-exact]', 'data-exact'))!, anna.billed))
    t.equal(await page.$$eval('#user-events-table tbody tr', (r) => r.length), Math.min(50, anna.requests))
    t.ok(await page.$('#user-models-table tbody tr'))
    t.ok(await page.$('#user-chart svg'))
    await page.screenshot({ path: join(shots, 'usage-user.png'), fullPage: true })
    await page.click('#back')
    await page.waitForSelector('#overview:not([hidden]) #users-table')
  })

  t.test('a period without requests shows a friendly empty state', async (t) => {
    await page.selectOption('#preset', 'custom')
    await page.fill('#from', '2020-01-01')
    await page.fill('#through', '2020-01-31')
    await page.click('#period button[type=submit]')
    await page.waitForSelector('#empty:not([hidden])')
    t.equal(await page.getAttribute('#totals-requests [data-exact]', 'data-exact'), '0')
    t.ok(await page.isHidden('#overview-tables'))
    await page.selectOption('#preset', 'this-month')
    await page.waitForSelector('#empty[hidden]', { state: 'attached' })
  })

  t.test('readable on a narrow screen: only tables scroll sideways', async (t) => {
    await page.setViewportSize({ width: 375, height: 800 })
    await page.waitForSelector('#users-table')
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
    t.ok(overflow <= 0, `the page itself does not scroll sideways (${overflow}px)`)
    await page.screenshot({ path: join(shots, 'usage-page-narrow.png'), fullPage: true })
  })

  t.test('sign out returns to the sign-in form', async (t) => {
    await page.click('#sign-out button')
    await page.waitForSelector('#sign-in-view:not([hidden])')
    const r = await page.evaluate(async () => (await fetch('/admin/v1/usage')).status)
    t.equal(r, 401, 'the cookie is gone')
  })
}
