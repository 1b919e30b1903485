// One measurement: a load scenario against one target, with the CPU time and peak RSS of the
// target's processes taken over exactly the measured window (warm-up excluded). CPU of the
// upstream, Postgres, the load generator and everything else on the machine is recorded too,
// so a noisy neighbour shows in the results instead of hiding in them.
import { cpus } from 'node:os'
import { runLoad } from './load.js'
import { machineBusySeconds, pidsNamed, rssSampler, treeCpu, cpuSeconds, treeRss } from './procstat.js'
import { countUsageRows } from './db.js'
import { summarize } from './stats.js'

/** CPU seconds per Postgres process: backends come and go, so deltas are taken per pid. */
const postgresCpu = () => new Map(pidsNamed('postgres').map((p) => [p, cpuSeconds(p)]))
const postgresDelta = (before, after) => {
  let sum = 0
  for (const [pid, cpu] of after) sum += cpu - (before.get(pid) ?? 0)
  return sum
}
const selfCpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6 }

function snapshot (target, upstreamPid) {
  return {
    at: performance.now(),
    proxy: target.pid ? treeCpu(target.pid) : 0,
    upstream: treeCpu(upstreamPid),
    postgres: postgresCpu(),
    loadgen: selfCpu(),
    machine: machineBusySeconds(),
  }
}

/**
 * scenario: { name, concurrency, stream, headers? }. ledgerSql: a client on the bench database
 * when the target is usage-proxy (rows in usage_events are counted at both edges of the window).
 */
export async function measure ({ target, scenario, seconds, warmupSeconds, upstreamPid, ledgerSql = null }) {
  let before, after, sampler, rows0, rows1
  const rssBefore = target.pid ? treeRss(target.pid) : 0
  const result = await runLoad({
    url: target.url,
    concurrency: scenario.concurrency,
    stream: scenario.stream,
    body: scenario.body,
    seconds,
    warmupSeconds,
    headers: { ...target.headers, ...scenario.headers },
    onMeasureStart: async () => {
      before = snapshot(target, upstreamPid)
      sampler = target.pid ? rssSampler(target.pid, 100) : null
      if (ledgerSql) rows0 = { n: await countUsageRows(ledgerSql), at: performance.now() }
    },
    onMeasureEnd: async () => {
      after = snapshot(target, upstreamPid)
      if (ledgerSql) rows1 = { n: await countUsageRows(ledgerSql), at: performance.now() }
    },
  })
  const rssPeak = sampler ? sampler.stop() : 0
  const d = (k) => k === 'postgres' ? postgresDelta(before.postgres, after.postgres) : after[k] - before[k]
  const windowS = (after.at - before.at) / 1000
  const ours = d('proxy') + d('upstream') + d('postgres') + d('loadgen')
  const lat = summarize(result.latencies)
  const ttfb = summarize(result.ttfbs)
  return {
    target: target.name,
    scenario: scenario.name,
    concurrency: scenario.concurrency,
    stream: scenario.stream,
    requests: result.requests,
    errors: result.errors,
    errorKinds: result.errorKinds,
    okTotal: result.okTotal,
    seconds: result.seconds,
    rps: result.rps,
    latencyMs: lat,
    ttfbMs: ttfb,
    cpuSeconds: {
      proxy: target.pid ? d('proxy') : null,
      upstream: d('upstream'),
      postgres: d('postgres'),
      loadgen: d('loadgen'),
      // Busy time of the machine not spent by any process of this bench (other work running).
      other: Math.max(0, d('machine') - ours),
      window: windowS,
      capacity: windowS * cpus().length,
    },
    cpuMsPerRequest: target.pid && result.requests ? (d('proxy') * 1000) / result.requests : null,
    rssBeforeBytes: rssBefore,
    rssPeakBytes: rssPeak,
    ledgerRowsPerSecond: ledgerSql ? (rows1.n - rows0.n) / ((rows1.at - rows0.at) / 1000) : null,
    // Kept in memory only, to pool the percentiles of several rounds; not written to JSON.
    samples: { latencies: result.latencies, ttfbs: result.ttfbs },
  }
}
