// Memory under many slow streams: a fresh bare Node proxy and a fresh usage-proxy (so the figure
// is not inflated by the heap an earlier throughput run grew) each hold `concurrency` streams of
// `events` events `paceMs` apart, for a window in which every stream is in flight.
import { stop } from './children.js'
import { measure } from './measure.js'
import { startBareNode, startUsageProxy } from './targets.js'

export async function slowStreams ({ tmp, upstream, databaseUrl, names, concurrency, paceMs, events, seconds, before = async () => {}, say }) {
  const streamSeconds = (events * paceMs) / 1000
  const scenario = { name: 'slow-streams', concurrency, stream: true, headers: { 'x-bench-pace-ms': String(paceMs), 'x-bench-events': String(events) } }
  const out = []
  for (const name of names) {
    const target = name === 'bare-node'
      ? await startBareNode({ tmp, upstreamPort: upstream.port })
      : await startUsageProxy({ tmp, upstreamPort: upstream.port, databaseUrl, name: 'usage-proxy-slow' })
    target.name = name
    try {
      await before()
      const m = await measure({
        target,
        scenario,
        seconds: Math.max(seconds, 2 * streamSeconds),
        warmupSeconds: streamSeconds + 1, // every connection open and streaming before the window
        upstreamPid: upstream.child.pid,
      })
      Object.assign(m, { events, paceMs, fresh: true })
      out.push(m)
      say?.(`slow streams ${name}: ${concurrency} concurrent, RSS ${(m.rssBeforeBytes / 1048576).toFixed(0)} -> peak ${(m.rssPeakBytes / 1048576).toFixed(0)} MB, errors ${m.errors}`)
    } finally {
      await stop(target.child, 30_000) // graceful: usage-proxy flushes its ledger
    }
  }
  return out
}
