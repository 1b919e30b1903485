import t from 'tap'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createTestDb, type TestDb } from './support/db.js'
import { ensureBuilt, runNodeAsync } from './support/child.js'
import { ORG, seedLedger } from './support/seed.js'
import { parseCsv } from './support/csv.js'
import { migrate } from '../src/db/migrate.js'
import { StatementError, render, statement, type Statement } from '../src/usage/reports/statement.js'
import { sameDecimal, sumDecimals } from '../src/lib/decimal.js'

// The monthly statement: per-user lines whose exact total equals the sum of the lines and the
// sum over usage_events, for one organization or all of them.

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const OTHER = 'mai_client_0000beef'
let db: TestDb
/** Every significant digit, no trailing zeros, no trailing '.', zero as "0". */
const EXACT = /^-?(0|[1-9]\d*)(\.\d*[1-9])?$/

t.before(async () => {
  db = await createTestDb({ migrated: true })
  await migrate(db.sql, join(root, 'sql'))
  await seedLedger(db.sql, { rows: 400, from: '2026-10-25', days: 45 })
  await seedLedger(db.sql, { rows: 150, from: '2026-11-01', days: 30, seed: 9, organizationId: OTHER, markup: '7.25' })
})
t.teardown(() => db?.drop())

async function run (args: string[], env: Record<string, string> = {}): Promise<string> {
  let out = ''
  await statement(args, { DATABASE_URL: db.url, OPENROUTER_EXTERNAL_USER: ORG, ...env }, (s) => { out += s })
  return out
}

async function fromDb (org: string | null): Promise<{ requests: number, cost: string, billed: string, cents: string }> {
  const [r] = await db.sql<[{ requests: number, cost: string, billed: string, cents: string }]>`
    select count(*)::int as requests, coalesce(sum(cost_usd), 0)::text as cost, coalesce(sum(billed_cost_usd), 0)::text as billed,
           round(coalesce(sum(billed_cost_usd), 0), 2)::text as cents
    from usage_events where created_at >= '2026-11-01T00:00:00Z' and created_at < '2026-12-01T00:00:00Z'
      and (${org}::text is null or organization_id = ${org})`
  return r
}

t.test('json: per-user lines, and a total equal to their sum and to usage_events', async (t) => {
  const s = JSON.parse(await run(['--month', '2026-11', '--format', 'json'])) as Statement
  t.equal(s.from, '2026-11-01')
  t.equal(s.to, '2026-12-01')
  t.equal(s.organizations.length, 1)
  const org = s.organizations[0]
  t.equal(org.id, ORG)
  t.ok(org.lines.length >= 3, 'a line per user')
  const db$ = await fromDb(ORG)
  t.equal(org.total.requests, db$.requests)
  t.ok(sameDecimal(org.total.billed_cost_usd, db$.billed), `billed ${org.total.billed_cost_usd} = usage_events ${db$.billed}`)
  t.ok(sameDecimal(org.total.cost_usd, db$.cost))
  t.ok(sameDecimal(org.total.billed_cost_usd, sumDecimals(org.lines.map((l) => l.billed_cost_usd))), 'total = sum of lines')
  for (const l of org.lines) t.ok(sameDecimal(l.markup_usd, sumDecimals([l.billed_cost_usd, '-' + l.cost_usd])), 'markup = billed - cost')
  // The group section (the seed puts users' rows in Sales, in Engineering and Sales, or in none).
  const groups = await db.sql<Array<{ group_id: string, members: number, requests: number, billed: string }>>`
    select g as group_id, count(distinct user_id)::int as members, count(*)::int as requests, coalesce(sum(billed_cost_usd), 0)::text as billed
    from usage_events, unnest(groups) g
    where organization_id = ${ORG} and created_at >= '2026-11-01' and created_at < '2026-12-01' group by 1 order by 1`
  t.same(org.groups.map((g) => g.group_id).sort(), groups.map((g) => g.group_id), 'a line per group')
  for (const g of groups) {
    const line = org.groups.find((l) => l.group_id === g.group_id)!
    t.equal(line.members, g.members, `${g.group_id}: members are users, not rollup rows`)
    t.equal(line.requests, g.requests, `${g.group_id}: requests`)
    t.ok(sameDecimal(line.billed_cost_usd, g.billed), `${g.group_id}: billed to the digit`)
  }
  t.ok(sameDecimal(org.total.markup_usd, sumDecimals([org.total.billed_cost_usd, '-' + org.total.cost_usd])))
  const anna = org.lines.find((l) => l.user_id === 'u-anna')
  t.equal(anna?.user_name, 'Anna Müller')
  t.equal(org.markup_percent, '12.5', 'the markup without trailing zeros')
  for (const row of [...org.lines, org.total]) {
    for (const c of ['prompt_tokens', 'total_tokens', 'cost_usd', 'markup_usd', 'billed_cost_usd'] as const) t.match(row[c], EXACT, `${c} ${row[c]} exact, no trailing zeros`)
  }
  t.equal(org.invoice_total_usd, db$.cents, `the invoice total: ${db$.billed} half up to the cent`)
})

t.test('csv: RFC 4180 lines plus a total line per organization; --all-organizations', async (t) => {
  const [header, ...rows] = parseCsv(await run(['--month=2026-11', '--format=csv', '--all-organizations'], { OPENROUTER_EXTERNAL_USER: '' }))
  t.equal(header[0], 'line')
  const col = (name: string): number => header.indexOf(name)
  for (const org of [ORG, OTHER]) {
    const lines = rows.filter((r) => r[0] === 'user' && r[col('organization_id')] === org)
    const total = rows.filter((r) => r[0] === 'total' && r[col('organization_id')] === org)
    t.equal(total.length, 1, `${org}: one total line`)
    const db$ = await fromDb(org)
    t.ok(sameDecimal(total[0][col('billed_cost_usd')], db$.billed), `${org}: total = usage_events`)
    t.ok(sameDecimal(sumDecimals(lines.map((r) => r[col('billed_cost_usd')])), db$.billed), `${org}: sum of lines = usage_events`)
    t.equal(Number(total[0][col('requests')]), db$.requests)
  }
  t.ok(rows.some((r) => r[col('user_name')] === 'Bob "the builder", Jr.'), 'quoted names survive')
  t.ok(rows.every((r) => ['cost_usd', 'markup_usd', 'billed_cost_usd'].every((c) => EXACT.test(r[col(c)]))), 'no trailing zeros in any amount')
})

t.test('md: a readable table with a bold total; --out writes a file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'statement-'))
  const out = join(dir, 'nov.md')
  t.equal(await run(['--month', '2026-11', '--out', out]), '', 'nothing on stdout')
  const md = readFileSync(out, 'utf8')
  t.match(md, /^# Statement 2026-11: Org mai_client_63a4eb6d \(mai_client_63a4eb6d\)/)
  t.match(md, /Markup 12\.5%/)
  const db$ = await fromDb(ORG)
  const total = /\| \*\*Total\*\* \| \| \*\*(\d+)\*\* \| \*\*\d+\*\* \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\* \| \*\*([\d.]+)\*\* \|/.exec(md)
  t.ok(total, 'a total row')
  t.equal(Number(total![1]), db$.requests)
  t.ok(sameDecimal(total![4], db$.billed))
  t.match(md, /Bob "the builder", Jr\. \(u-bob\)/)
  t.match(md, /\| Markup 12\.5% \|/, 'the markup column says the percent')
  const cells = md.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| User') && !l.startsWith('| Group')).flatMap((l) => l.split(' | ').slice(2).map((c) => c.replace(/[*| ]/g, '')))
  t.ok(cells.length > 10)
  t.same(cells.filter((c) => c !== '' && !EXACT.test(c)), [], 'every number in the table is exact, without trailing zeros')
  t.equal(/\*\*Invoice total: \$([\d,]+\.\d\d)\*\*\[\^exact-1\]/.exec(md)?.[1], db$.cents, 'the invoice total in cents, from the exact total')
  const note = /^\[\^exact-1\]: Exactly ([\d.]+) USD/m.exec(md)
  t.ok(note, 'a footnote with the exact amount')
  t.equal(note![1], total![4], 'the footnote repeats the exact billed total')
})

t.test('md: the invoice total is rounded once, half up, on the total, never per line', async (t) => {
  const line = (user: string, billed: string) => ({
    organization_id: 'o', organization_name: 'O', user_id: user, user_name: null, user_email: null, requests: 1,
    prompt_tokens: '1', completion_tokens: '1', total_tokens: '2', cost_usd: billed, markup_usd: '0', billed_cost_usd: billed,
  })
  const doc = (lines: Array<ReturnType<typeof line>>, billed: string, markup = '0'): string => render({
    month: '2026-11', from: '2026-11-01', to: '2026-12-01',
    organizations: [{
      id: 'o', name: 'O', markup_percent: markup, lines, groups: [], invoice_total_usd: '',
      total: { requests: lines.length, prompt_tokens: '1', completion_tokens: '1', total_tokens: '2', cost_usd: billed, markup_usd: '0', billed_cost_usd: billed },
    }],
  }, 'md')
  const invoice = (md: string): string | undefined => /\*\*Invoice total: (\S+)\*\*/.exec(md)?.[1]
  // Each line alone rounds to $0.00; their total does not.
  t.equal(invoice(doc([line('a', '0.0049'), line('b', '0.0049'), line('c', '0.0049')], '0.0147')), '$0.01')
  t.equal(invoice(doc([line('a', '0.125')], '0.125')), '$0.13', 'half up, not to even')
  t.equal(invoice(doc([line('a', '0.124999')], '0.124999')), '$0.12')
  t.equal(invoice(doc([line('a', '1234567.895')], '1234567.895')), '$1,234,567.90', 'thousands grouped')
  t.equal(invoice(doc([], '0')), '$0.00')
  t.match(doc([line('a', '0.0147')], '0.0147', '7.25'), /Markup 7\.25%/)
  t.match(doc([line('a', '0.0147')], '0.0147'), /Markup 0%/, 'no markup reads as 0%')
})

t.test('a month without usage still prints a statement, with zero totals', async (t) => {
  const s = JSON.parse(await run(['--month', '2020-02', '--format', 'json'])) as Statement
  t.same(s.organizations[0].lines, [])
  t.equal(s.organizations[0].total.billed_cost_usd, '0')
  t.equal(s.organizations[0].invoice_total_usd, '0.00')
  t.equal(s.to, '2020-03-01')
  t.match(await run(['--month', '2020-02']), /\*\*Invoice total: \$0\.00\*\*/)
})

t.test('md with every organization: each has its own invoice total and footnote', async (t) => {
  const md = await run(['--month', '2026-11', '--all-organizations'], { OPENROUTER_EXTERNAL_USER: '' })
  t.match(md, /Markup 7\.25%/)
  for (const [n, org] of [[1, OTHER], [2, ORG]] as const) { // in order of id
    const db$ = await fromDb(org)
    t.match(md, new RegExp(`\\*\\*Invoice total: \\$${db$.cents.replace('.', '\\.')}\\*\\*\\[\\^exact-${n}\\]`), `${org}: $${db$.cents}`)
    const note = new RegExp(`^\\[\\^exact-${n}\\]: Exactly ([\\d.]+) USD`, 'm').exec(md)
    t.ok(note && sameDecimal(note[1], db$.billed), `${org}: the footnote's exact amount`)
  }
})

t.test('bad arguments are refused with a message', async (t) => {
  for (const [args, env, message] of [
    [[], {}, /--month/],
    [['--month', '2026-13'], {}, /YYYY-MM/],
    [['--month', '2026-11', '--format', 'xml'], {}, /--format/],
    [['--month'], {}, /needs a value/],
    [['--month', '2026-11', '--bogus'], {}, /unknown argument/],
    [['--month', '2026-11'], { OPENROUTER_EXTERNAL_USER: '' }, /OPENROUTER_EXTERNAL_USER/],
    [['--month', '2026-11'], { OPENROUTER_EXTERNAL_USER: 'nobody_here' }, /no organization nobody_here/],
  ] as const) {
    await t.rejects(run([...args], env), message, args.join(' '))
  }
  await t.rejects(run(['--month', '2026-11'], { DATABASE_URL: 'mysql://x' }), /DATABASE_URL/)
  t.ok(new StatementError('x') instanceof Error)
})

t.test('the command as users run it: node dist/cli.js statement', async (t) => {
  const cli = join(root, 'dist', 'cli.js')
  ensureBuilt()
  // In an empty directory (no .env), and not blocking this process: it may serve the database.
  const env = { DATABASE_URL: db.url, OPENROUTER_EXTERNAL_USER: ORG }
  const ok = await runNodeAsync([cli, 'statement', '--month', '2026-11', '--format', 'json'], env)
  t.equal(ok.status, 0, ok.stderr)
  t.equal(JSON.parse(ok.stdout).organizations[0].total.requests, (await fromDb(ORG)).requests)
  const bad = await runNodeAsync([cli, 'statement', '--month', 'november'], env)
  t.equal(bad.status, 2)
  t.match(bad.stderr, /usage-proxy: --month must be YYYY-MM/)
  const help = await runNodeAsync([cli, '--help'], env)
  t.match(help.stdout, /statement --month YYYY-MM/)
})
