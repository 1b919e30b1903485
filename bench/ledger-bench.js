// Ledger throughput: the compiled Ledger (journal included, as the sidecar runs it) takes N usage
// records and writes them to a fresh Postgres database. Records are offered as fast as the ledger
// takes them, with the queue kept under a bound as live traffic would; RSS is sampled throughout
// to show it stays flat.
//
//   node bench/ledger-bench.js [--records=200000] [--no-journal] [--batch=500] [--flush-ms=50]
//   prints one JSON object on stdout (batch and flush default to the sidecar's LEDGER_* defaults)
import { randomUUID } from 'node:crypto'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freshDatabase, countUsageRows } from './db.js'
import { ROOT } from './targets.js'
import { cpuSeconds, pidsNamed } from './procstat.js'

const dist = (p) => import(join(ROOT, 'dist', p))
const { Ledger } = await dist('usage/ledger.js')
const { Journal } = await dist('usage/journal.js')
const { connect } = await dist('db/connect.js')
const { migrate } = await dist('db/migrate.js')
const { upsertOrganization } = await dist('db/organizations.js')
const { createLogger } = await dist('log.js')

const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
const N = Number(arg('records', process.env.BENCH_LEDGER_RECORDS ?? '200000'))
const withJournal = !process.argv.includes('--no-journal')
const BATCH = Number(arg('batch', '500'))
const FLUSH_MS = Number(arg('flush-ms', '50'))
const MAX_BACKLOG = 5_000 // records queued and not yet committed, at most
const ORG = { id: 'bench_org', name: 'Bench Org', markupPercent: '0' }

function record (i) {
  return {
    eventId: randomUUID(),
    generationId: `gen-ledger-${i}`,
    organizationId: ORG.id,
    userId: `user-${i % 50}`,
    externalUserId: `bench_org_u${i % 50}`,
    endpoint: 'chat/completions',
    model: 'openai/gpt-4o-mini',
    servedModel: 'openai/gpt-4o-mini',
    provider: 'OpenAI',
    streamed: i % 2 === 0,
    status: 200,
    outcome: 'ok',
    finishReason: 'stop',
    errorMessage: null,
    usageSource: 'inline',
    promptTokens: 42,
    completionTokens: 24,
    totalTokens: 66,
    cachedTokens: 0,
    reasoningTokens: 0,
    costUsd: '0.0000267',
    upstreamCostUsd: null,
    isByok: false,
    markupPercent: '0',
    latencyMs: 812.25,
    ttfbMs: 120.5,
    chatId: `chat-${i % 200}`,
    createdAt: new Date().toISOString(),
  }
}

const log = createLogger('warn')
const url = await freshDatabase(withJournal ? 'usage_proxy_ledger_bench' : 'usage_proxy_ledger_bench_nj')
const sql = await connect({ url, log, retryMaxMs: 1000, max: 4 })
await migrate(sql, join(ROOT, 'sql'))
await upsertOrganization(sql, ORG, 'sk-or-v1-bench-0000000000000000')
const dir = mkdtempSync(join(tmpdir(), 'ledger-bench-'))
const journal = withJournal ? new Journal(join(dir, 'journal'), log) : null
journal?.replay()
const ledger = new Ledger(sql, journal, log, { batchSize: BATCH, flushMs: FLUSH_MS })

// Live heap after a full GC at each quarter: RSS follows the collector's sawtooth, this does not.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc')
const live = []
let nextQuarter = 1
const checkpoint = () => {
  while (nextQuarter <= 4 && ledger.written >= (N * nextQuarter) / 4) {
    gc()
    live.push(process.memoryUsage().heapUsed / 1048576)
    nextQuarter++
  }
}

const rss = []
const sample = () => rss.push({ at: ledger.written, mb: process.memoryUsage.rss() / 1048576 })
const sampler = setInterval(sample, 250)
sample()

// Postgres CPU: every postgres process, before and while our connections still live.
const pgCpu = () => pidsNamed('postgres').reduce((sum, p) => sum + cpuSeconds(p), 0)
const selfCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6 }
const pg0 = pgCpu()
const self0 = selfCpu()
const t0 = performance.now()
let offered = 0
while (offered < N) {
  checkpoint()
  if (offered - ledger.written >= MAX_BACKLOG) { await new Promise((r) => setTimeout(r, 1)); continue }
  const upTo = Math.min(N, offered + 500)
  while (offered < upTo) ledger.record(record(offered++))
  await new Promise((r) => setImmediate(r))
}
const drained = await ledger.drain(120_000)
const seconds = (performance.now() - t0) / 1000
checkpoint()
clearInterval(sampler)
sample()
const cpu = { ledgerProcess: selfCpu() - self0, postgres: pgCpu() - pg0 }
ledger.close()
journal?.close()
const rows = await countUsageRows(sql)
await sql.end({ timeout: 2 })
rmSync(dir, { recursive: true, force: true })

// Flatness: past the first quarter (heap warm), RSS against records committed should have no
// slope. A leak of whole records (~1 KB each) would climb ~100 MB per 100,000 records.
const settled = rss.filter((s) => s.at >= N / 4)
const mbs = rss.map((s) => s.mb)
const at = (fraction) => rss.find((s) => s.at >= N * fraction)?.mb ?? null
const result = {
  journal: withJournal,
  batchSize: BATCH,
  records: N,
  rows,
  drained,
  seconds,
  recordsPerSecond: rows / seconds,
  cpuSeconds: cpu,
  rssMb: { start: mbs[0], atQuarter: at(0.25), atHalf: at(0.5), atThreeQuarters: at(0.75), peak: Math.max(...mbs), end: mbs[mbs.length - 1] },
  rssGrowthAfterQuarterMb: settled.length ? Math.max(...settled.map((s) => s.mb)) - settled[0].mb : null,
  rssSlopeMbPer100k: slope(settled.map((s) => [s.at / 100_000, s.mb])),
  liveHeapMb: live, // after a full GC at 1/4, 1/2, 3/4 and all records committed
  liveHeapGrowthAfterQuarterMb: live.length === 4 ? live[3] - live[0] : null,
}
process.stdout.write(JSON.stringify(result) + '\n')

/** Least-squares slope of [x, y] points; null for fewer than 3. */
function slope (points) {
  if (points.length < 3) return null
  const n = points.length
  const mx = points.reduce((a, [x]) => a + x, 0) / n
  const my = points.reduce((a, [, y]) => a + y, 0) / n
  let num = 0; let den = 0
  for (const [x, y] of points) { num += (x - mx) * (y - my); den += (x - mx) ** 2 }
  return den === 0 ? null : num / den
}
