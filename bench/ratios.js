// The pass-through targets, as ratios to the bare Node pass-through measured in the same run. Each
// figure is the median over rounds of a per-round value (rounds alternate targets), so one
// noisy round does not decide it.
const median = (xs) => { const s = xs.filter((x) => x !== null && !Number.isNaN(x)).sort((a, b) => a - b); return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN }
const f = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? '—' : x.toFixed(d))
const sign = (x, d = 2) => `${x >= 0 ? '+' : ''}${f(x, d)}`

/** Per (scenario, target): median added p50 over direct, CPU ms/request and req/s across rounds. */
export function perRoundMedians (measurements) {
  const by = (sc, t) => measurements.filter((m) => m.scenario === sc && m.target === t)
  const out = new Map()
  for (const key of new Set(measurements.map((m) => `${m.scenario}|${m.target}`))) {
    const [sc, t] = key.split('|')
    const runs = by(sc, t)
    const direct = by(sc, 'direct')
    const added = runs.map((m) => { const d = direct.find((x) => x.round === m.round); return d ? m.latencyMs.p50 - d.latencyMs.p50 : NaN })
    const perRequest = (m, ...procs) => procs.reduce((sum, p) => sum + (m.cpuSeconds?.[p] ?? NaN), 0) * 1000 / m.requests
    out.set(key, {
      addedP50: median(added),
      p50: median(runs.map((m) => m.latencyMs.p50)),
      cpuMsPerRequest: median(runs.map((m) => m.cpuMsPerRequest)),
      rps: median(runs.map((m) => m.rps)),
      rounds: runs.length,
      // CPU of every process on the machine but Postgres, and of Postgres, per request (ms).
      machineMs: median(runs.map((m) => perRequest(m, 'proxy', 'upstream', 'loadgen', 'other'))),
      postgresMs: median(runs.map((m) => perRequest(m, 'postgres'))),
    })
  }
  return out
}

export function ratioChecks (measurements) {
  const med = perRoundMedians(measurements)
  const get = (sc, t) => med.get(`${sc}|${t}`)
  const out = []
  const add = (name, target, actual, ok, detail) => out.push({ name: `#13 ${name}`, target, actual, ok, detail })
  for (const sc of ['chat500k-c1', 'chat500k-c8', 'image4m-c1', 'image4m-c8']) {
    const up = get(sc, 'usage-proxy'); const bare = get(sc, 'bare-node')
    if (!up || !bare) continue
    const limit = 1.25 * bare.addedP50 + 1
    add(`added p50, ${sc}`, '<= 1.25x bare + 1 ms', `${sign(up.addedP50)} ms (limit ${sign(limit)})`, up.addedP50 <= limit, `bare Node ${sign(bare.addedP50)} ms over direct; median of ${up.rounds} rounds`)
    const r = up.cpuMsPerRequest / bare.cpuMsPerRequest
    add(`CPU per request, ${sc}`, '<= 1.5x bare', `${f(r)}x`, r <= 1.5, `${f(up.cpuMsPerRequest, 3)} vs ${f(bare.cpuMsPerRequest, 3)} ms/req`)
    const same = get(sc, 'bare-node-headroom')
    if (same) {
      // The same GC regime on both sides: what is left is the sidecar's work, not V8's tuning.
      const rs = up.cpuMsPerRequest / same.cpuMsPerRequest
      add(`CPU per request vs bare Node with the same GC headroom, ${sc}`, '<= 1.5x', `${f(rs)}x`, rs <= 1.5, `${f(up.cpuMsPerRequest, 3)} vs ${f(same.cpuMsPerRequest, 3)} ms/req`)
    }
  }
  for (const sc of ['c64', 'c64-stream', 'c64-whole', 'c64-stream-whole']) {
    const up = get(sc, 'usage-proxy'); const bare = get(sc, 'bare-node')
    if (!up || !bare) continue
    const r = up.rps / bare.rps
    // The machine's cores are shared: at bare Node's own utilization, a sidecar exactly as cheap
    // as bare Node would still pay Postgres's CPU for the row, on the same cores.
    const ceiling = bare.machineMs / (bare.machineMs + up.postgresMs)
    add(`throughput, ${sc}`, '>= 0.85x bare', `${f(r)}x`, r >= 0.85, `${Math.round(up.rps)} vs ${Math.round(bare.rps)} req/s; CPU ${f(up.cpuMsPerRequest, 3)} vs ${f(bare.cpuMsPerRequest, 3)} ms/req; ` +
      `ceiling on this machine ${f(ceiling)}x (bare Node's ${f(bare.machineMs, 3)} ms of machine CPU per request plus Postgres's ${f(up.postgresMs, 3)})`)
  }
  // The metering floor (bench/floor-proxy.js): bare Node plus the least metering must do. The
  // ratio is taken per round (rounds alternate targets) and its median kept.
  for (const sc of ['c64', 'c64-stream', 'c64-whole', 'c64-stream-whole']) {
    const rounds = measurements.filter((m) => m.scenario === sc && m.target === 'usage-proxy')
    const ratios = rounds.map((m) => { const fl = measurements.find((x) => x.scenario === sc && x.target === 'floor' && x.round === m.round); return fl ? m.rps / fl.rps : NaN })
    const r = median(ratios)
    if (Number.isNaN(r)) continue
    const up = get(sc, 'usage-proxy'); const fl = get(sc, 'floor')
    add(`throughput vs the metering floor, ${sc}`, '>= 0.9x floor', `${f(r)}x`, r >= 0.9, `per round ${ratios.map((x) => f(x)).join(', ')}; ${Math.round(up.rps)} vs ${Math.round(fl.rps)} req/s; CPU ${f(up.cpuMsPerRequest, 3)} vs ${f(fl.cpuMsPerRequest, 3)} ms/req; Postgres ${f(up.postgresMs, 3)} vs ${f(fl.postgresMs, 3)} ms/req`)
  }
  for (const sc of ['c1', 'c1-whole']) {
    const up = get(sc, 'usage-proxy'); const bare = get(sc, 'bare-node')
    if (!up || !bare) continue
    const d = up.addedP50 - bare.addedP50
    add(`added p50 at c=1, ${sc}`, '<= bare + 0.1 ms', `${sign(d, 3)} ms`, d <= 0.1, `added ${sign(up.addedP50, 3)} vs ${sign(bare.addedP50, 3)} ms over direct`)
  }
  return out
}
