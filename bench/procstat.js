// Reading a process (and its descendants) from /proc: CPU time and resident memory.
import { readdirSync, readFileSync } from 'node:fs'

const TICKS_PER_SECOND = 100 // USER_HZ: 100 on every Linux build Node supports

/** The pid and every descendant (nginx master + workers; a wrapper and its child). */
export function processTree (pid) {
  const out = []
  const walk = (p) => {
    out.push(p)
    let children = ''
    try { children = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8') } catch { return }
    for (const c of children.split(' ')) if (c.trim()) walk(Number(c))
  }
  walk(pid)
  return out
}

/** utime + stime of one process, in seconds; 0 once it is gone. */
export function cpuSeconds (pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name, which sits in parentheses and may hold spaces.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND // fields 14 and 15 of stat(5)
  } catch { return 0 }
}

/** Resident set size of one process, in bytes; 0 once it is gone. */
export function rssBytes (pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : 0
  } catch { return 0 }
}

export const treeCpu = (pid) => processTree(pid).reduce((s, p) => s + cpuSeconds(p), 0)
export const treeRss = (pid) => processTree(pid).reduce((s, p) => s + rssBytes(p), 0)

/** Every process whose command is `name` (Postgres' backends are not our children). */
export function pidsNamed (name) {
  const out = []
  for (const entry of readdirSafe('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try { if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === name) out.push(Number(entry)) } catch {}
  }
  return out
}

function readdirSafe (dir) {
  try { return readdirSync(dir) } catch { return [] }
}

/** Samples the peak RSS of a process tree every `everyMs` until stopped. */
export function rssSampler (pid, everyMs = 200) {
  let peak = treeRss(pid)
  const timer = setInterval(() => { peak = Math.max(peak, treeRss(pid)) }, everyMs)
  return { stop () { clearInterval(timer); peak = Math.max(peak, treeRss(pid)); return peak } }
}

/** CPU seconds the whole machine spent busy (all cores), from /proc/stat. */
export function machineBusySeconds () {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]
  const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number)
  return (user + nice + system + irq + softirq + (steal || 0)) / TICKS_PER_SECOND
}

/**
 * Waits until the machine is quiet (busy below `maxBusyCores` over a 500 ms window) or `maxMs`
 * passed: other work on a 2-core machine (a test suite, a compiler) would skew a measurement.
 * Resolves with { waitedMs, busyCores } of the last window.
 */
export async function waitQuiet ({ maxMs = 15_000, maxBusyCores = 0.3 } = {}) {
  const t0 = Date.now()
  for (;;) {
    const b0 = machineBusySeconds()
    await new Promise((r) => setTimeout(r, 500))
    const busyCores = (machineBusySeconds() - b0) / 0.5
    if (busyCores <= maxBusyCores || Date.now() - t0 >= maxMs) return { waitedMs: Date.now() - t0, busyCores }
  }
}
