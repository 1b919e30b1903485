import t, { type Test } from 'tap'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createHash } from 'node:crypto'
import { request } from 'undici'
import type { Browser, Page } from 'playwright-core'
import { FakeOpenRouter } from './support/fake-openrouter.js'
import { createTestDb, type TestDb } from './support/db.js'
import { baseEnv, settle, startSidecar, type Started } from './support/sidecar.js'
import { seedLedger } from './support/seed.js'
import { parseCsv } from './support/csv.js'
import { externalUserId } from '../src/identity/external-id.js'
import { formatUsd, sameDecimal, sumDecimals } from '../src/lib/decimal.js'

// The /admin/ page in a real browser: Debian's Chromium driven by playwright-core (nothing is
// downloaded). It signs in, reads the numbers the page shows and checks them against the
// database, downloads a CSV, and takes screenshots into .tap/screenshots/. Then the group view
// and the audit trail, each against a sidecar and database of its own, in the same browser and
// the same tab: each sidecar is an origin of its own (its port), so storage is apart, and the
// cookies are cleared before each part. One Chromium and one renderer for the three: a context
// of its own each started a renderer and loaded the page's fonts again, about a second of CPU.

const CHROMIUM = '/usr/bin/chromium'
const ADMIN_KEY = 'admin-key-0123456789abcdef'
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const shots = join(root, '.tap', 'screenshots')

// Three files' worth of pages (this one's, the group view's, the audit trail's) in one process:
// its time limit is twice the suite's, unless one longer (or none: 0) was asked for.
const limit = Number(process.env.TAP_TIMEOUT ?? 30)
if (limit > 0) t.setTimeout(Math.max(limit, 240) * 1000)

if (!existsSync(CHROMIUM)) {
  t.test('the /admin/ page in Chromium', { skip: `${CHROMIUM} is missing; install the Debian package "chromium" (apt-get install chromium)` }, async () => {})
} else {
  let fake: FakeOpenRouter
  let db: TestDb
  let on: Started
  let browser: Browser | undefined
  let page: Page
  let mainPage: Page | undefined
  /**
   * The group view's and the audit trail's tab: the one the usage page's tests used (started here
   * when those ran alone), without its cookies, at 1280 px.
   */
  const freshPage = async (): Promise<Page> => {
    mainPage ??= await (await (await launched()).newContext({ acceptDownloads: true })).newPage()
    await mainPage.context().clearCookies()
    await mainPage.setViewportSize({ width: 1280, height: 900 })
    return mainPage
  }
  /** The one Chromium of this file, started by whichever part asks first. */
  const launched = async (): Promise<Browser> => {
    if (browser === undefined) {
      const { chromium } = await import('playwright-core')
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
      })
    }
    return browser
  }
  const now = new Date()
  const monthStart = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)).toISOString().slice(0, 10)
  const nextMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString().slice(0, 10)

  t.before(async () => {
    fake = await new FakeOpenRouter().start()
    db = await createTestDb({ migrated: true })
    on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }))
    await seedLedger(db.sql, { rows: 800, from: monthStart, days: now.getUTCDate() - 1 + now.getUTCHours() / 24 })
    const context = await (await launched()).newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } })
    page = await context.newPage()
    mainPage = page
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

  const api = async (method: string, path: string, body?: unknown): Promise<number> => {
    const res = await fetch(on.url + path, {
      method, headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body),
    })
    await res.arrayBuffer()
    return res.status
  }
  const reload = async (): Promise<void> => {
    await page.reload()
    // The whole overview, the groups and the audit trail included: they arrive after the tables.
    await page.waitForSelector('#overview[data-loaded]:not([hidden]) #users-table')
  }

  /** At 1280 px: the page does not scroll sideways, and every table fits its card. */
  const fitsAt1280 = async (t: Test, when: string): Promise<void> => {
    await page.setViewportSize({ width: 1280, height: 900 })
    await reload()
    const m = await page.evaluate(() => ({
      body: [document.body.scrollWidth, document.body.clientWidth],
      root: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
      wraps: [...document.querySelectorAll('#overview .table-wrap')].filter((w) => (w as HTMLElement).offsetParent !== null)
        .map((w) => [w.querySelector('table')?.id, w.scrollWidth, w.clientWidth]),
    }))
    t.ok(m.body[0] <= m.body[1], `${when}: body ${m.body[0]} <= ${m.body[1]}`)
    t.ok(m.root[0] <= m.root[1], `${when}: page ${m.root[0]} <= ${m.root[1]}`)
    const ids = m.wraps.map((w) => String(w[0]))
    for (const id of ['days-table', 'users-table', 'models-table', 'tasks-table', 'outcomes-table', 'groups-table', 'audit-table']) t.ok(ids.includes(id), `${when}: ${id} was measured (${ids.join(', ')})`)
    for (const [id, sw, cw] of m.wraps) t.ok(Number(sw) <= Number(cw), `${when}: ${id} ${sw} <= ${cw}, inside its card`)
  }

  t.test('the header names the organization, not its id', async (t) => {
    await page.setViewportSize({ width: 1280, height: 900 })
    await reload()
    t.equal(await page.textContent('#org'), 'Acme GmbH', 'ORGANIZATION_NAME')
    t.equal(await page.getAttribute('#org', 'title'), 'mai_client_63a4eb6d', 'the id at hand in the tooltip')
    t.equal(await page.title(), 'Usage · Acme GmbH · usage-proxy', 'and in the tab')
    await page.click('#users-table a[data-user="u-anna"]')
    await page.waitForSelector('#user-view:not([hidden]) #user-totals-billed [data-exact]')
    t.equal(await page.textContent('#org'), 'Acme GmbH', 'on a user\'s page too')
    await page.click('#back')
    await page.waitForSelector('#overview:not([hidden]) #users-table')
  })

  t.test('the budget column names its period; budgets of different periods say theirs in each row', async (t) => {
    const header = () => page.textContent('#users-table thead th:last-child')
    const cell = (user: string) => page.textContent(`#users-table tr:has(a[data-user="${user}"]) td:last-child`)
    t.equal(await api('PUT', '/admin/v1/budgets/users/u-anna', { limit_usd: '5', period: 'month' }), 200)
    t.equal(await api('PUT', '/admin/v1/budgets/users/u-bob', { limit_usd: '20', period: 'month' }), 200)
    await reload()
    t.equal(await header(), 'Budget used (month)', 'one period: the header says it')
    t.match(await cell('u-anna'), /^\s*\d+% of \$5\.00$/)
    t.equal(await api('PUT', '/admin/v1/budgets/users/u-bob', { limit_usd: '1', period: 'day' }), 200)
    await reload()
    t.equal(await header(), 'Budget used', 'periods differ: each row says its own')
    t.match(await cell('u-anna'), /of \$5\.00 per month$/)
    t.match(await cell('u-bob'), /of \$1\.00 per day$/)
    t.equal(await cell('u-chen'), '—', 'no budget')
    await fitsAt1280(t, 'with budgets of two periods')
    await page.screenshot({ path: join(shots, 'usage-page-budgets.png'), fullPage: true })
    await page.click('#users-table a[data-user="u-bob"]')
    await page.waitForSelector('#user-view:not([hidden]) #user-budget .budget')
    t.match(await page.textContent('#user-budget'), /of \$1\.00 per day$/, 'a user\'s page says the period')
    await page.click('#back')
    for (const u of ['u-anna', 'u-bob']) t.equal(await api('DELETE', `/admin/v1/budgets/users/${u}`), 200)
    await reload()
    t.equal(await header(), 'Budget used')
  })

  t.test('an amount under a cent reads non-zero, in the one money format of the page', async (t) => {
    await db.sql`insert into user_mappings (organization_id, user_id, external_user_id, user_name, user_email)
      values ('mai_client_63a4eb6d', 'u-tiny', ${externalUserId('mai_client_63a4eb6d', 'u-tiny')}, '小林 さくら', 'sakura.kobayashi@acme-holdings.test')`
    await db.sql`insert into usage_events (event_id, generation_id, organization_id, user_id, external_user_id, endpoint, model, provider,
        streamed, status, outcome, usage_source, prompt_tokens, completion_tokens, total_tokens, cost_usd, markup_percent, kind, created_at)
      values (gen_random_uuid(), 'gen-tiny', 'mai_client_63a4eb6d', 'u-tiny', ${externalUserId('mai_client_63a4eb6d', 'u-tiny')},
        'chat/completions', 'openai/gpt-4o', 'Fake', false, 200, 'ok', 'inline', 3, 1, 4, '0.00004', '12.5', 'chat', now())`
    await reload()
    const cells = await page.$$eval('#users-table tr:has(a[data-user="u-tiny"]) [data-exact]', (es) => es.map((e) => [e.getAttribute('data-exact'), e.textContent]))
    t.same(cells[2], ['0.00004', '$0.00004'], 'cost $0.00004 shows as such')
    t.same(cells[3], ['0.000045', '$0.000045'], 'billed with markup, two significant digits')
    const shown = await page.$$eval('[data-exact]', (es) => es.filter((e) => /[1-9]/.test(e.getAttribute('data-exact') ?? '') && e.textContent?.startsWith('$'))
      .map((e) => e.textContent ?? ''))
    t.ok(shown.length > 20)
    t.same(shown.filter((v) => /^-?\$[0.,]+$/.test(v)), [], 'no non-zero amount reads as $0.00')
    t.same(shown.filter((v) => !/^-?\$\d{1,3}(,\d{3})*\.(\d\d|0\d*[1-9]\d?)$/.test(v)), [], 'cents, or two significant digits under a cent: one format')
    const exact = await page.$$eval('[data-exact]', (es) => es.filter((e) => e.textContent?.startsWith('$')).map((e) => [e.getAttribute('data-exact'), e.textContent]))
    t.same(exact.filter(([v, text]) => formatUsd(v!) !== text), [], 'every money cell is formatUsd of its exact amount')
  })

  t.test('1280 px: nothing overflows, a long name and an amount under a cent included', (t) => fitsAt1280(t, 'all users'))

  t.test('390 px: tables scroll inside their cards, the page does not, the chart\'s labels are readable', async (t) => {
    await page.setViewportSize({ width: 390, height: 844 })
    await reload()
    const m = await page.evaluate(() => {
      const wraps = [...document.querySelectorAll('#overview .table-wrap')].filter((w) => (w as HTMLElement).offsetParent !== null) as HTMLElement[]
      return {
        body: [document.body.scrollWidth, document.body.clientWidth],
        root: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
        users: wraps.filter((w) => w.querySelector('#users-table')).map((w) => [w.scrollWidth, w.clientWidth, getComputedStyle(w).overflowX])[0],
        cards: wraps.map((w) => w.getBoundingClientRect().right),
        ticks: [...document.querySelectorAll('#chart text')].map((e) => ({
          text: e.textContent, css: parseFloat(getComputedStyle(e).fontSize), drawn: e.getBoundingClientRect().height,
        })),
      }
    })
    t.ok(m.body[0] <= m.body[1], `body ${m.body[0]} <= ${m.body[1]}`)
    t.ok(m.root[0] <= m.root[1], `page ${m.root[0]} <= ${m.root[1]}`)
    t.ok(m.users[0] > m.users[1], `the users table is wider than its card (${m.users[0]} > ${m.users[1]})`)
    t.equal(m.users[2], 'auto', 'and the card scrolls it')
    t.same(m.cards.filter((r) => r > 390), [], 'every card ends inside the screen')
    t.ok(m.ticks.length >= 3, 'the chart has labels')
    for (const tk of m.ticks) {
      t.ok(tk.css >= 11, `${tk.text}: ${tk.css}px`)
      t.ok(tk.drawn >= 11, `${tk.text}: drawn ${tk.drawn.toFixed(1)}px high, not scaled down`)
    }
    await page.screenshot({ path: join(shots, 'usage-page-390.png'), fullPage: true })
    await page.setViewportSize({ width: 1280, height: 900 })
  })

  t.test('CJK names render with a real font, not empty boxes', async (t) => {
    await reload()
    // Empty boxes (no font) are one glyph for every character: two different ideographs drawn
    // in the page's font come out different only when a font has them.
    const differ = await page.evaluate(() => {
      const a = document.querySelector('#users-table a[data-user="u-chen"]')!
      const font = getComputedStyle(a).font
      const draw = (ch: string): string => {
        const c = document.createElement('canvas'); c.width = 40; c.height = 40
        const g = c.getContext('2d')!; g.font = font; g.textBaseline = 'top'; g.fillText(ch, 4, 4)
        return Array.from(g.getImageData(0, 0, 40, 40).data).join(',')
      }
      return { name: a.textContent, differ: draw('陈') !== draw('晨') && draw('晨') !== draw('林') }
    })
    t.equal(differ.name, '陈 晨')
    t.ok(differ.differ, 'the CJK glyphs differ: a CJK font is installed (Debian: apt-get install fonts-noto-cjk)')
  })

  t.test('sign out returns to the sign-in form', async (t) => {
    await page.click('#sign-out button')
    await page.waitForSelector('#sign-in-view:not([hidden])')
    const r = await page.evaluate(async () => (await fetch('/admin/v1/usage')).status)
    t.equal(r, 401, 'the cookie is gone')
  })

  // ---- The group view: the Groups table and a group's page show what the database holds for
  // each group, to the digit, say that a request in two groups counts in both, and show a budget
  // column once a group budget is set. Its own sidecar and database: six requests, no seed.
  t.test('the group view in Chromium', async (t) => {
    const fake = await new FakeOpenRouter().start()
    const db = await createTestDb({ migrated: true })
    const on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY }))
    t.teardown(async () => {
      await on.sidecar.stop('test end')
      await fake.close()
      await db.drop()
    })
    const send = async (user: string, name: string, groups: string): Promise<void> => {
      const res = await request(`${on.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-openwebui-user-id': user, 'x-openwebui-user-name': name, 'x-openwebui-user-groups': groups },
        body: JSON.stringify({ model: 'fake/ok', messages: [{ role: 'user', content: 'hi' }], stream: false }),
      })
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`)
      await res.body.dump()
    }
    // Grace teaches maths and physics; Ada physics; Lin is in no group.
    for (let i = 0; i < 3; i++) await send('u-grace', 'Grace', 'Maths,Physics')
    for (let i = 0; i < 2; i++) await send('u-ada', 'Ada', 'Physics')
    await send('u-lin', 'Lin', '{{USER_GROUPS}}')
    await settle(on.sidecar, db.sql, 6)
    const page = await freshPage()

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

    await t.test('the Groups table: members and spend per group, equal to the database; the note on counting', async (t) => {
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

    await t.test('a group\'s page: its members and models, its totals equal the database', async (t) => {
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

    await t.test('a group budget set through the admin API appears as a budget column and on the group\'s page', async (t) => {
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
  })

  // ---- The usage page's "Recent changes": the audit trail as the API gives it, newest first,
  // every value shown as text (a user id holding markup stays text), older pages on request, and
  // a forgotten user appearing by pseudonym only. Its own sidecar and database, with an
  // organization budget from the environment.
  t.test('the audit trail on the /admin/ page in Chromium', async (t) => {
    const AUTH = { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }
    const PRINT = createHash('sha256').update(ADMIN_KEY).digest('hex').slice(0, 12)
    const HOSTILE = '<img src=x onerror="window.__pwned=1">'
    const fake = await new FakeOpenRouter().start()
    const db = await createTestDb({ migrated: true })
    const on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, ORG_BUDGET_USD: '500' }))
    t.teardown(async () => {
      await on.sidecar.stop('test end')
      await fake.close()
      await db.drop()
    })
    const page = await freshPage()

    const put = async (path: string, body: unknown) => {
      const r = await request(on.url + path, { method: 'PUT', headers: AUTH, body: JSON.stringify(body) })
      await r.body.dump()
      return r.statusCode
    }

    const rows = () => page.$$eval('#audit-table tbody tr', (trs) => trs.map((tr) => [...tr.children].map((c) => c.textContent)))

    await t.test('recent changes: newest first, as text, older ones on request, forgotten users by pseudonym', async (t) => {
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
  })
}
