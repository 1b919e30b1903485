// Turns the raw measurements into figures per (scenario, target), checks them against the
// issue's targets, and renders Markdown.
import { mean, percentile, sortedCopy } from './stats.js'

const MB = 1048576
const f = (x, digits = 2) => (x === null || x === undefined || Number.isNaN(x) ? '—' : x.toFixed(digits))
const int = (x) => (x === null || x === undefined || Number.isNaN(x) ? '—' : Math.round(x).toLocaleString('en-US'))

/** Pools the rounds of each (scenario, target) pair. */
export function aggregate (measurements) {
  const groups = new Map()
  for (const m of measurements) {
    const key = `${m.scenario}|${m.target}`
    if (!groups.has(key)) groups.set(key, [])
    groups.get(key).push(m)
  }
  const out = []
  for (const runs of groups.values()) {
    const lat = sortedCopy(runs.flatMap((r) => r.samples.latencies))
    const ttfb = sortedCopy(runs.flatMap((r) => r.samples.ttfbs))
    const requests = runs.reduce((s, r) => s + r.requests, 0)
    const proxyCpu = runs[0].cpuSeconds.proxy === null ? null : runs.reduce((s, r) => s + r.cpuSeconds.proxy, 0)
    out.push({
      scenario: runs[0].scenario,
      target: runs[0].target,
      concurrency: runs[0].concurrency,
      stream: runs[0].stream,
      rounds: runs.length,
      rps: mean(runs.map((r) => r.rps)),
      rpsByRound: runs.map((r) => r.rps),
      requests,
      errors: runs.reduce((s, r) => s + r.errors, 0),
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      ttfbP50: percentile(ttfb, 50),
      rssPeakMb: runs[0].rssPeakBytes ? Math.max(...runs.map((r) => r.rssPeakBytes)) / MB : null,
      cpuMsPerRequest: proxyCpu === null || requests === 0 ? null : (proxyCpu * 1000) / requests,
      ledgerRowsPerSecond: runs[0].ledgerRowsPerSecond === null ? null : mean(runs.map((r) => r.ledgerRowsPerSecond)),
      otherBusyCores: mean(runs.map((r) => r.cpuSeconds.other / r.cpuSeconds.window)),
    })
  }
  for (const a of out) {
    const direct = out.find((d) => d.scenario === a.scenario && d.target === 'direct')
    a.addedP50 = direct && a.target !== 'direct' ? a.p50 - direct.p50 : null
    a.addedTtfbP50 = direct && a.target !== 'direct' ? a.ttfbP50 - direct.ttfbP50 : null
  }
  return out
}

export function checks ({ figures, slow, ledger }) {
  const get = (scenario, target) => figures.find((a) => a.scenario === scenario && a.target === target)
  const out = []
  const add = (name, target, actual, ok, detail) => out.push({ name, target, actual, ok, detail })
  // Throughput and latency against bare Node, large bodies included, are the ratio checks
  // (bench/ratios.js: medians of per-round ratios); these are the others.
  for (const sc of ['c64', 'c64-stream', 'c64-stream-whole']) {
    const up = get(sc, 'usage-proxy')
    const pk = get(sc, 'portkey')
    if (up && pk) {
      const x = up.rps / pk.rps
      add(`throughput vs Portkey, ${sc}`, '>= 8x', `${f(x, 1)}x`, x >= 8,
        `${int(up.rps)} vs ${int(pk.rps)} req/s; CPU ${f(up.cpuMsPerRequest, 3)} vs ${f(pk.cpuMsPerRequest, 3)} ms/req (${f(pk.cpuMsPerRequest / up.cpuMsPerRequest, 1)}x less)`)
    }
  }
  for (const sc of ['c1-stream', 'c64-stream']) {
    const ups = get(sc, 'usage-proxy'); const dirs = get(sc, 'direct'); const bares = get(sc, 'bare-node')
    if (!ups || !dirs) continue
    const d = ups.ttfbP50 - dirs.ttfbP50
    add(`stream TTFB p50 vs direct, ${sc}`, '<= +0.5 ms', `${d >= 0 ? '+' : ''}${f(d, 3)} ms`, d <= 0.5,
      `${f(ups.ttfbP50, 3)} vs ${f(dirs.ttfbP50, 3)} ms` + (bares ? `; bare Node ${bares.addedTtfbP50 >= 0 ? '+' : ''}${f(bares.addedTtfbP50, 3)} ms` : ''))
  }
  const slowUp = slow.find((s) => s.target === 'usage-proxy')
  const slowBare = slow.find((s) => s.target === 'bare-node')
  if (slowUp) {
    const mb = slowUp.rssPeakBytes / MB
    add(`RSS with ${slowUp.concurrency} concurrent streams`, '<= 150 MB', `${f(mb, 1)} MB`, mb <= 150 && slowUp.errors === 0,
      `${slowUp.errors} errors; idle ${f(slowUp.rssBeforeBytes / MB, 0)} MB` + (slowBare ? `; bare Node peak ${f(slowBare.rssPeakBytes / MB, 1)} MB` : ''))
  }
  const lj = ledger.find((l) => l.journal)
  if (lj) {
    add('ledger throughput (journal on)', '>= 20,000 rec/s', `${int(lj.recordsPerSecond)} rec/s`, lj.recordsPerSecond >= 20000 && lj.rows === lj.records, `${int(lj.rows)}/${int(lj.records)} rows`)
    // Flat: the live heap (after a full GC) does not grow past the first quarter, and RSS has
    // no slope a leak of records would give (~100 MB per 100k).
    const g = lj.liveHeapGrowthAfterQuarterMb
    add('ledger memory flat', 'live heap +<= 2 MB after 1/4; RSS slope <= 10 MB/100k', `${g >= 0 ? '+' : ''}${f(g, 1)} MB; ${f(lj.rssSlopeMbPer100k, 1)} MB/100k`,
      g !== null && g <= 2 && lj.rssSlopeMbPer100k <= 10,
      `live heap at 1/4, 1/2, 3/4, end: ${lj.liveHeapMb.map((x) => f(x, 1)).join(', ')} MB; RSS ${[lj.rssMb.atQuarter, lj.rssMb.atHalf, lj.rssMb.atThreeQuarters, lj.rssMb.end].map((x) => f(x, 0)).join(', ')} MB`)
  }
  return out
}

const SCENARIO_LABEL = {
  c1: 'c=1 non-stream',
  'c1-stream': 'c=1 stream (20 events)',
  c64: 'c=64 non-stream',
  'c64-stream': 'c=64 stream (20 events)',
  'c64-stream-whole': 'c=64 stream, upstream writes it in one piece',
  'chat500k-c1': 'c=1, 500 KB chat history',
  'chat500k-c8': 'c=8, 500 KB chat history',
  'image4m-c1': 'c=1, 4 MB image (base64)',
  'image4m-c8': 'c=8, 4 MB image (base64)',
}

export function markdown ({ figures, slow, ledger, checkList, skipped, completeness }) {
  const lines = []
  lines.push('| scenario | target | req/s (per round) | p50 ms | p99 ms | TTFB p50 ms | +p50 vs direct ms | RSS MB | CPU ms/req | ledger rows/s | errors |')
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|')
  for (const a of figures) {
    const rounds = a.rpsByRound.map((r) => int(r)).join(' / ')
    lines.push(`| ${SCENARIO_LABEL[a.scenario] ?? a.scenario} | ${a.target} | ${int(a.rps)} (${rounds}) | ${f(a.p50, 3)} | ${f(a.p99, 2)} | ${f(a.ttfbP50, 3)} | ${a.addedP50 === null ? '—' : f(a.addedP50, 3)} | ${f(a.rssPeakMb, 0)} | ${f(a.cpuMsPerRequest, 3)} | ${a.ledgerRowsPerSecond === null ? '—' : int(a.ledgerRowsPerSecond)} | ${a.errors} |`)
  }
  for (const s of skipped) lines.push(`\nSkipped: ${s.name}: ${s.skipped}`)
  if (slow.length) {
    lines.push('', '| slow streams | target | concurrent | RSS before MB | RSS peak MB | streams done | TTFB p50 ms | CPU ms/stream | errors |')
    lines.push('|---|---|---|---|---|---|---|---|---|')
    for (const s of slow) {
      lines.push(`| ${s.events} events, ${s.paceMs} ms apart | ${s.target} | ${s.concurrency} | ${f(s.rssBeforeBytes / MB, 0)} | ${f(s.rssPeakBytes / MB, 0)} | ${int(s.requests)} | ${f(s.ttfbMs.p50, 2)} | ${f(s.cpuMsPerRequest, 3)} | ${s.errors} |`)
    }
  }
  if (ledger.length) {
    lines.push('', '| ledger micro-bench | batch | records | rows | records/s | RSS start / 1/4 / 1/2 / 3/4 / end MB | slope after 1/4 MB per 100k | CPU s (ledger / postgres) |')
    lines.push('|---|---|---|---|---|---|---|---|')
    for (const l of ledger) {
      const r = l.rssMb
      lines.push(`| ${l.journal ? 'journal + Postgres (as the sidecar runs)' : 'Postgres only (no journal)'} | ${l.batchSize} | ${int(l.records)} | ${int(l.rows)} | ${int(l.recordsPerSecond)} | ${[r.start, r.atQuarter, r.atHalf, r.atThreeQuarters, r.end].map((x) => f(x, 0)).join(' / ')} | ${f(l.rssSlopeMbPer100k, 1)} | ${f(l.cpuSeconds.ledgerProcess, 1)} / ${f(l.cpuSeconds.postgres, 1)} |`)
    }
  }
  if (completeness) {
    lines.push('', `Ledger completeness (usage-proxy, whole run): ${int(completeness.okRows)} rows with outcome ok for ${int(completeness.okResponses)} good responses; ${int(completeness.otherRows)} other rows (${completeness.otherOutcomes || 'none'}).`)
  }
  if (checkList.length) {
    lines.push('', '| target | goal | measured | met | detail |', '|---|---|---|---|---|')
    for (const c of checkList) lines.push(`| ${c.name} | ${c.target} | ${c.actual} | ${c.ok ? 'yes' : '**no**'} | ${c.detail} |`)
  }
  const noisy = figures.filter((a) => a.otherBusyCores > 0.2)
  if (noisy.length) {
    lines.push('', `Noise: other work on the machine kept on average ${noisy.map((a) => `${f(a.otherBusyCores, 2)} cores busy during ${a.target} ${a.scenario}`).join('; ')}.`)
  }
  return lines.join('\n') + '\n'
}
