// Reads a V8 .cpuprofile and sums time per function: self time (where the samples landed) and,
// for the project's own code, inclusive time. dist/ locations are mapped back to src/*.ts through
// the compiler's source maps.
//
//   node bench/cpuprofile-summary.js FILE.cpuprofile [--top=25]
import { existsSync, readFileSync } from 'node:fs'
import { SourceMap } from 'node:module'
import { fileURLToPath } from 'node:url'
import { relative } from 'node:path'
import { BENCH, ROOT } from './targets.js'

const maps = new Map()
function sourceMapFor (file) {
  if (!maps.has(file)) {
    let map = null
    try { if (existsSync(file + '.map')) map = new SourceMap(JSON.parse(readFileSync(file + '.map', 'utf8'))) } catch {}
    maps.set(file, map)
  }
  return maps.get(file)
}

/** "src/proxy/metered.ts:182" for project code, "node:internal/...:12" or "undici/lib/...:40" otherwise. */
export function location ({ url, lineNumber, columnNumber }) {
  if (!url) return ''
  if (url.startsWith('file://')) {
    const file = fileURLToPath(url)
    const map = file.startsWith(ROOT + '/dist/') ? sourceMapFor(file) : null
    const entry = map?.findEntry(lineNumber, columnNumber)
    if (entry?.originalSource) {
      const src = entry.originalSource.startsWith('file://') ? fileURLToPath(entry.originalSource) : new URL(entry.originalSource, url).pathname
      return `${relative(ROOT, src)}:${entry.originalLine + 1}`
    }
    const nm = file.lastIndexOf('/node_modules/')
    if (nm !== -1) return `${file.slice(nm + 14)}:${lineNumber + 1}`
    if (file.startsWith(BENCH + '/')) return `bench/${relative(BENCH, file)}:${lineNumber + 1}`
    return `${relative(ROOT, file)}:${lineNumber + 1}`
  }
  return `${url}:${lineNumber + 1}`
}

export function area (loc, name) {
  if (name === '(garbage collector)') return 'GC'
  if (name === '(idle)') return 'idle'
  if (name === '(program)') return 'V8/native (program)'
  if (loc.startsWith('src/')) return 'usage-proxy src'
  if (loc.startsWith('bench/')) return 'bench (bare proxy)'
  if (loc.startsWith('node:')) return 'Node core (JS)'
  if (loc.startsWith('wasm:')) return 'undici llhttp (wasm)'
  if (loc === '') return 'native (syscalls, C++ builtins)'
  const pkg = /^(@[^/]+\/[^/]+|[^/]+)\//.exec(loc)?.[1]
  return pkg ?? 'native/other'
}

export function summarize (profile, top = 25) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const parent = new Map()
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  const keyOf = new Map()
  const info = new Map()
  for (const n of profile.nodes) {
    const cf = n.callFrame
    const name = cf.functionName || '(anonymous)'
    const loc = location(cf)
    const key = `${name} ${loc}`
    keyOf.set(n.id, key)
    if (!info.has(key)) info.set(key, { name, loc, area: area(loc, name), self: 0, total: 0 })
  }
  // timeDeltas[i] is the time before sample i; the time a sample stands for is the next delta.
  const { samples, timeDeltas } = profile
  let all = 0
  for (let i = 0; i < samples.length; i++) {
    const dt = (timeDeltas[i + 1] ?? 0) / 1000 // ms
    all += dt
    const id = samples[i]
    info.get(keyOf.get(id)).self += dt
    const seen = new Set()
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const k = keyOf.get(at)
      if (!seen.has(k)) { seen.add(k); info.get(k).total += dt }
    }
  }
  const rows = [...info.values()]
  const idle = rows.filter((r) => r.name === '(idle)').reduce((s, r) => s + r.self, 0)
  const busy = all - idle
  const areas = {}
  for (const r of rows) areas[r.area] = (areas[r.area] ?? 0) + r.self
  const pct = (ms) => (busy > 0 ? (100 * ms) / busy : 0)
  const fmt = (r) => ({ function: r.name, location: r.loc, area: r.area, selfMs: r.self, selfPct: pct(r.self), totalMs: r.total, totalPct: pct(r.total) })
  return {
    profiledMs: all,
    idleMs: idle,
    busyMs: busy,
    byArea: Object.entries(areas).filter(([a]) => a !== 'idle').map(([a, ms]) => ({ area: a, selfMs: ms, selfPct: pct(ms) })).sort((x, y) => y.selfMs - x.selfMs),
    topSelf: rows.filter((r) => r.name !== '(idle)').sort((a, b) => b.self - a.self).slice(0, top).map(fmt),
    projectInclusive: rows.filter((r) => r.area === 'usage-proxy src').sort((a, b) => b.total - a.total).slice(0, top).map(fmt),
    projectSelf: rows.filter((r) => r.area === 'usage-proxy src').sort((a, b) => b.self - a.self).slice(0, top).map(fmt),
  }
}

export function summaryMarkdown (s) {
  const p = (x) => x.toFixed(1) + '%'
  const lines = [`Profiled ${(s.profiledMs / 1000).toFixed(1)} s, of which busy ${(s.busyMs / 1000).toFixed(1)} s (percentages are of busy time).`, '']
  lines.push('| area | self % |', '|---|---|')
  for (const a of s.byArea.slice(0, 12)) lines.push(`| ${a.area} | ${p(a.selfPct)} |`)
  lines.push('', '| top self time | location | self % | total % |', '|---|---|---|---|')
  for (const r of s.topSelf) lines.push(`| ${r.function} | ${r.location} | ${p(r.selfPct)} | ${p(r.totalPct)} |`)
  lines.push('', '| usage-proxy src, by inclusive time | location | total % | self % |', '|---|---|---|---|')
  for (const r of s.projectInclusive) lines.push(`| ${r.function} | ${r.location} | ${p(r.totalPct)} | ${p(r.selfPct)} |`)
  return lines.join('\n') + '\n'
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const file = process.argv[2]
  if (!file) { process.stderr.write('usage: node bench/cpuprofile-summary.js FILE.cpuprofile [--top=25]\n'); process.exit(2) }
  const top = Number((process.argv.find((a) => a.startsWith('--top=')) ?? '--top=25').slice(6))
  process.stdout.write(summaryMarkdown(summarize(JSON.parse(readFileSync(file, 'utf8')), top)))
}
