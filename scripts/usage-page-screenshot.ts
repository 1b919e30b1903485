// The README's picture of the usage page, docs/usage-page.png, made the way the browser test
// makes its screenshots: a test database (PostgreSQL on 127.0.0.1:5432, or the embedded one), the
// fake OpenRouter, a seeded ledger (a CJK user name among them), monthly budgets, and Debian's
// Chromium at 1280 px showing last month. Needs a CJK font (apt-get install fonts-noto-cjk).
//
//   node --import @tapjs/typescript/import scripts/usage-page-screenshot.ts [out.png]

import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { FakeOpenRouter } from '../test/support/fake-openrouter.js'
import { createTestDb } from '../test/support/db.js'
import { baseEnv, startSidecar } from '../test/support/sidecar.js'
import { seedLedger } from '../test/support/seed.js'

const CHROMIUM = '/usr/bin/chromium'
const ADMIN_KEY = 'admin-key-0123456789abcdef'
const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = resolve(process.argv[2] ?? join(root, 'docs', 'usage-page.png'))

if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium fonts-noto-cjk`)

const iso = (ms: number): string => new Date(ms).toISOString().slice(0, 10)
const now = new Date()
const thisMonth = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)
const lastMonth = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1)
const lastDay = thisMonth - 86_400_000

const fake = await new FakeOpenRouter().start()
const db = await createTestDb()
const on = await startSidecar(baseEnv(fake, db.url, { ADMIN_API_KEY: ADMIN_KEY, LOG_LEVEL: 'silent' }))
const { chromium } = await import('playwright-core')
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--no-first-run'] })
try {
  await seedLedger(db.sql, { rows: 800, from: iso(lastMonth), days: (thisMonth - lastMonth) / 86_400_000 })
  await seedLedger(db.sql, { rows: 150, from: iso(thisMonth), days: Math.max(0.5, now.getUTCDate() - 1 + now.getUTCHours() / 24), seed: 11 })
  // Monthly budgets, so the budget column shows its bars and names its period.
  for (const [user, limit] of [['u-anna', '0.25'], ['u-bob', '0.15'], ['u-chen', '0.20']]) {
    const res = await fetch(`${on.url}/admin/v1/budgets/users/${user}`, {
      method: 'PUT', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ limit_usd: limit, period: 'month' }),
    })
    if (res.status !== 200) throw new Error(`budget for ${user}: HTTP ${res.status} ${await res.text()}`)
  }
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage()
  await page.goto(`${on.url}/admin/`)
  await page.fill('#key', ADMIN_KEY)
  await page.keyboard.press('Enter')
  await page.waitForSelector('#users-table')
  await page.goto(`${on.url}/admin/#from=${iso(lastMonth)}&through=${iso(lastDay)}&preset=last-month`)
  await page.waitForFunction(() => document.getElementById('status')?.textContent?.startsWith('Showing'))
  await page.waitForSelector('#users-table .budget')
  await page.screenshot({ path: out, fullPage: true })
  process.stdout.write(`${out}\n`)
} finally {
  await browser.close()
  await on.sidecar.stop('screenshot taken')
  await fake.close()
  await db.drop()
}
