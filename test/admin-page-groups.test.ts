import t from 'tap'
import { existsSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import type { Browser, Page } from 'playwright-core'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, type Started } from './support/sidecar.js'
import { formatUsd, sameDecimal } from '../src/lib/decimal.js'

// The group view of the /admin/ page in Chromium (Debian's, driven by playwright-core): the
// Groups table and a group's page show what the database holds for each group, to the digit, say
// that a request in two groups counts in both, and show a budget column once a group budget is set.

const CHROMIUM = '/usr/bin/chromium'
const ADMIN_KEY = 'admin-key-0123456789abcdef'
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const shots = join(root, '.tap', 'screenshots')

if (!existsSync(CHROMIUM)) {
  t.test('the group view in Chromium', { skip: `${CHROMIUM} is missing; install the Debian package "chromium" (apt-get install chromium)` }, async () => {})
} else {
  let fake: FakeOpenRouter
  let db: TestDb
  let on: Started
  let browser: Browser
  let page: Page
  const now = new Date()
  const monthStart = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().slice(0, 10)
  const nextMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString().slice(0, 10)

  const send = async (user: string, name: string, groups: string): Promise<void> => {
    const res = await request(`${on.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user, 'x-openwebui-user-name': name, 'x-openwebui-user-groups': groups },
      body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], stream: false }),
    })
    if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`)
    await res.body.dump()
  }

  t.before(async () => {
    fake = await new FakeOpenRouter().start()
    db = await createTestDb()
    on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }))
    // Grace teaches maths and physics; Ada physics; Lin is in no group.
    for (let i = 0; i < 3; i++) await send('u-grace', 'Grace', 'Maths,Physics')
    for (let i = 0; i < 2; i++) await send('u-ada', 'Ada', 'Physics')
    await send('u-lin', 'Lin', '{{USER_GROUPS}}')
    await settle(on.sidecar, db.sql, 6)
    const { chromium } = await import('playwright-core')
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    })
    page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage()
    mkdirSync(shots, { recursive: true })
  })
  t.teardown(async () => {
    await browser?.close()
    await on?.sidecar.stop('test end')
    await fake?.close()
    await db?.drop()
  })

  const inGroup = async (group: string | null) => {
    const [r] = await db.sql<Array<{ billed: string, requests: number, members: number }>>`
      select coalesce(sum(billed_cost_usd), 0)::text as billed, count(*)::int as requests, count(distinct user_id)::int as members
      from usage_events where created_at >= ${monthStart}::timestamptz and created_at < ${nextMonth}::timestamptz
        and (${group}::text is null or ${group}::text = any (groups))`
    return r
  }

  const groupRows = () => page.$$eval('#groups-table tbody tr', (trs) => trs.map((tr) => ({
    group: tr.querySelector('a[data-group]')?.getAttribute('data-group') ?? null,
    members: tr.querySelectorAll('[data-exact]')[0]?.getAttribute('data-exact') ?? '',
    requests: tr.querySelectorAll('[data-exact]')[1]?.getAttribute('data-exact') ?? '',
    billed: tr.querySelectorAll('[data-exact]')[4]?.getAttribute('data-exact') ?? '',
    shown: tr.querySelectorAll('[data-exact]')[4]?.textContent ?? '',
    cells: tr.children.length,
  })))

  t.test('the Groups table: members and spend per group, equal to the database; the note on counting', async (t) => {
    await page.goto(`${on.url}/admin/`)
    await page.fill('#key', ADMIN_KEY)
    await page.keyboard.press('Enter')
    await page.waitForSelector('#groups-table tbody tr')
    const rows = await groupRows()
    t.same(rows.map((r) => r.group).sort(), ['Maths', 'Physics'], 'one row per group; an unexpanded template is no group')
    for (const r of rows) {
      const db$ = await inGroup(r.group)
      t.equal(r.members, String(db$.members), `${r.group}: members`)
      t.equal(r.requests, String(db$.requests), `${r.group}: requests`)
      t.ok(sameDecimal(r.billed, db$.billed), `${r.group}: billed ${r.billed} = ${db$.billed}`)
      t.equal(r.shown, formatUsd(db$.billed))
    }
    t.equal(rows.find((r) => r.group === 'Physics')?.requests, '5', 'Grace\'s requests count in Physics as well as Maths')
    const all = await inGroup(null)
    t.ok(sameDecimal((await page.getAttribute('#totals-billed [data-exact]', 'data-exact'))!, all.billed), 'the organization total counts each request once')
    t.equal(await page.getAttribute('#totals-requests [data-exact]', 'data-exact'), '6')
    t.match(await page.textContent('#groups-note'), /counts in each of those groups' rows; the organization's total counts it once/)
    t.equal(await page.$('#groups-table th:text("Budget used")'), null, 'no group budgets: no budget column')
    await page.screenshot({ path: join(shots, 'usage-groups.png'), fullPage: true })
  })

  t.test('a group\'s page: its members and models, its totals equal the database', async (t) => {
    await page.click('#groups-table a[data-group="Physics"]')
    await page.waitForSelector('#group-view:not([hidden]) #group-totals-billed [data-exact]')
    t.match(await page.textContent('#group-title'), 'Group Physics')
    t.equal(await page.evaluate(() => document.activeElement?.id), 'group-title', 'focus moves to the new view')
    const physics = await inGroup('Physics')
    t.ok(sameDecimal((await page.getAttribute('#group-totals-billed [data-exact]', 'data-exact'))!, physics.billed))
    t.equal(await page.getAttribute('#group-totals-requests [data-exact]', 'data-exact'), '5')
    const members = await page.$$eval('#group-members-table tbody tr a[data-user]', (as) => as.map((a) => a.textContent))
    t.same(members.sort(), ['Ada', 'Grace'])
    t.match(await page.textContent('#group-view .group-note'), /counts in each of those groups; the organization's total counts it once/)
    t.ok(await page.$('#group-models-table tbody tr'))
    t.match(page.url(), /group=Physics/, 'the view is in the URL: bookmarkable, Back works')
    await page.screenshot({ path: join(shots, 'usage-group.png'), fullPage: true })
    await page.click('#group-back')
    await page.waitForSelector('#overview:not([hidden]) #groups-table')
  })

  t.test('a group budget set through the admin API appears as a budget column and on the group\'s page', async (t) => {
    const put = await request(`${on.url}/admin/v1/budgets/groups/Physics`, {
      method: 'PUT', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ limit_usd: '10', period: 'month' }),
    })
    t.equal(put.statusCode, 200)
    await put.body.dump()
    await page.reload()
    await page.waitForSelector('#groups-table th:text("Budget used (month)")')
    t.match(await page.textContent('#groups-table tr:has(a[data-group="Physics"]) .budget'), /\d+% of \$10\.00/)
    t.equal(await page.textContent('#groups-table tr:has(a[data-group="Maths"]) td:last-child'), '—', 'a group without a budget shows none')
    await page.click('#groups-table a[data-group="Physics"]')
    await page.waitForSelector('#group-view:not([hidden]) #group-budget .budget')
    t.match(await page.textContent('#group-budget'), /Group budget: .*% of \$10\.00 per month/)
    await page.screenshot({ path: join(shots, 'usage-group-budget.png'), fullPage: true })
  })
}
