// Ledger write throughput with partitions and rollups, from one process or several replicas at
// once: each worker is a process with its own compiled Ledger and journal (as a sidecar runs
// it), all of the same organization, all writing to one database at full speed. The records'
// users and models repeat, so the replicas' rollup upserts meet on the same rows.
//
//   node bench/scale-ledger.js [--replicas=3] [--records=300000] [--batch=2000] [--flat]
//   (LEDGER_PROFILE_DIR=dir: a CPU profile of each worker there, for bench/cpuprofile-summary.js)
//   (--flat: every migration but 007, the unpartitioned schema without rollups, for the comparison)
//   prints one JSON object on stdout
import { fork } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import { freshDatabase } from './db.js'
import { ROOT } from './targets.js'

const arg = (name, dflt) => { const a = process.argv.find((x) => x.startsWith(`--${name}=`)); return a ? a.slice(name.length + 3) : dflt }
const ORG = { id: 'bench_org', name: 'Bench Org', markupPercent: '12.5' }
const MAX_BACKLOG = 10_000

if (process.argv.includes('--worker')) await worker()
else await parent()

async function parent () {
  const replicas = Number(arg('replicas', '1'))
  const records = Number(arg('records', '300000'))
  const flat = process.argv.includes('--flat')
  const url = await freshDatabase('usage_proxy_bench_ledger_scale')
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  const files = readdirSync(join(ROOT, 'sql')).filter((f) => /^\d+_.*\.sql$/.test(f)).sort().filter((f) => !flat || Number(f.slice(0, 3)) !== 7)
  await sql.begin(async (tx) => { for (const f of files) await tx.unsafe(readFileSync(join(ROOT, 'sql', f), 'utf8')) })
  await sql`insert into organizations (id, name, markup_percent) values (${ORG.id}, ${ORG.name}, ${ORG.markupPercent})`
  const per = Math.ceil(records / replicas)
  const workers = Array.from({ length: replicas }, (_, i) => fork(fileURLToPath(import.meta.url), ['--worker', `--url=${url}`, `--records=${per}`, `--offset=${i * per}`, `--batch=${arg('batch', '2000')}`], { execArgv: process.env.LEDGER_PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.LEDGER_PROFILE_DIR}`] : [] }))
  await Promise.all(workers.map((w) => new Promise((r) => w.once('message', r)))) // each connected and ready
  const t0 = performance.now()
  const done = Promise.all(workers.map((w) => new Promise((r) => w.once('message', r))))
  for (const w of workers) w.send('go')
  // The deltas folded every 2 s during the run, as the sidecars do, and once more at the end.
  let folding = Promise.resolve()
  const compactor = flat ? null : setInterval(() => { folding = folding.then(() => sql`select usage_rollup_compact()`).then(() => {}) }, 2000)
  const results = await done
  const seconds = (performance.now() - t0) / 1000
  if (compactor) { clearInterval(compactor); await folding; await sql`select usage_rollup_compact()` }
  const [{ n, rollups, requests }] = await sql`select (select count(*) from usage_events)::int as n,
    ${flat ? sql`0` : sql`(select count(*) from usage_daily_rollups)`}::int as rollups,
    ${flat ? sql`0` : sql`(select coalesce(sum(requests), 0) from usage_daily_rollups)`}::int as requests`
  await sql.end()
  process.stdout.write(JSON.stringify({
    schema: flat ? 'flat (all but 007)' : 'partitioned + rollups (007)', replicas, records: replicas * per, rows: n, seconds: Math.round(seconds * 100) / 100,
    recordsPerSecond: Math.round(n / seconds), perReplica: results.map((r) => Math.round(r.recordsPerSecond)), rollupRows: rollups, rollupRequests: requests,
  }) + '\n')
}

async function worker () {
  const dist = (p) => import(join(ROOT, 'dist', p))
  const { Ledger } = await dist('usage/ledger.js')
  const { Journal } = await dist('usage/journal.js')
  const { connect } = await dist('db/connect.js')
  const { createLogger } = await dist('log.js')
  const N = Number(arg('records', '0'))
  const offset = Number(arg('offset', '0'))
  const log = createLogger('warn')
  const sql = await connect({ url: arg('url'), log, retryMaxMs: 1000, max: 4 })
  const dir = mkdtempSync(join(tmpdir(), 'scale-ledger-'))
  const journal = new Journal(join(dir, 'journal'), log)
  journal.replay()
  const ledger = new Ledger(sql, journal, log, { batchSize: Number(arg('batch', '2000')), flushMs: 50 })
  const record = (i) => ({
    eventId: randomUUID(), generationId: `gen-scale-${i}`, organizationId: ORG.id, userId: `user-${i % 200}`, externalUserId: `bench_org_u${i % 200}`,
    endpoint: 'chat/completions', model: `vendor/model-${i % 5}`, servedModel: `vendor/model-${i % 5}`, provider: 'P', streamed: i % 2 === 0,
    status: 200, outcome: 'ok', finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: 42, completionTokens: 24,
    totalTokens: 66, cachedTokens: 0, reasoningTokens: 0, costUsd: '0.0000267', upstreamCostUsd: null, isByok: false, markupPercent: '12.5',
    latencyMs: 812.25, ttfbMs: 120.5, chatId: `chat-${i % 200}`, kind: i % 10 === 0 ? 'title_generation' : 'chat', messageId: null,
    createdAt: new Date().toISOString(),
  })
  process.send('ready')
  await new Promise((r) => process.once('message', r))
  const t0 = performance.now()
  let offered = 0
  while (offered < N) {
    if (offered - ledger.written >= MAX_BACKLOG) { await new Promise((r) => setTimeout(r, 1)); continue }
    const upTo = Math.min(N, offered + 500)
    while (offered < upTo) ledger.record(record(offset + offered++))
    await new Promise((r) => setImmediate(r))
  }
  await ledger.drain(300_000)
  const seconds = (performance.now() - t0) / 1000
  ledger.close()
  journal.close()
  await sql.end({ timeout: 2 })
  rmSync(dir, { recursive: true, force: true })
  process.send({ recordsPerSecond: ledger.written / seconds }, () => process.exit(0))
}
