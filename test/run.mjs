#!/usr/bin/env node
// `npm test`'s runner. tap's runner starts a node process per test file and preloads
// @tapjs/processinfo into each (a module hook that copies every loaded module's text to the main
// thread), about 0.6 s of CPU per file on this 2-core machine, for coverage `npm test` does not
// measure. Coverage runs keep tap's runner (`npm run test:coverage`), and so does
// `npx tap test/x.test.ts`.
//
// Short files share a process: test/support/batch.mjs loads them one after another, each in a
// subtest named for the file, with its own `t`, database and sidecars. A process's fixed cost
// (Node, the TypeScript loader, tap, the sidecar's ~100 modules: a second of CPU or more here) is
// then paid once per batch. A file that changes the process itself (its heap, its handlers, its
// environment) says so in a line `// test/run.mjs: own process, <why>` and runs alone, as does a
// file that took TEST_ALONE_S or more last time, or one not named *.test.ts.
//
// The transpile cache is filled before the first file starts (test/support/ts-cache.mjs).
// Processes start longest first, by the times of the last run (.tap/test-times.json). A passing
// file prints one line; a failing process prints all it wrote. The last line is
// `N passed, N failed`, counted from each process's own tap summary.
//
// Usage: node test/run.mjs [--typecheck] [files...]   (jobs and timeout: package.json "tap", TAP_TIMEOUT;
// TEST_JOBS, TEST_TIMES_FILE, TEST_ALONE_S and TEST_BATCH_S override the jobs, where the times
// are kept, the time from which a file runs alone, and the time a batch holds)
import { spawn } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { transpiled } from './support/ts-cache.mjs'

const root = join(import.meta.dirname, '..')
const config = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).tap
const jobs = Number(process.env.TEST_JOBS ?? config.jobs ?? 4)
const timeoutS = Number(process.env.TAP_TIMEOUT ?? config.timeout ?? 120)
const nodeArgs = ['--enable-source-maps', ...(config['node-arg'] ?? [])]
const timesFile = process.env.TEST_TIMES_FILE ?? join(root, '.tap', 'test-times.json')

const aloneS = Number(process.env.TEST_ALONE_S ?? 10)
const batchS = Number(process.env.TEST_BATCH_S ?? 40)

const args = process.argv.slice(2)
const typecheck = args.includes('--typecheck')
const named = args.filter((a) => a !== '--typecheck')
const files = named.length > 0
  ? named.map((f) => relative(root, join(process.cwd(), f)))
  : readdirSync(join(root, 'test'), { recursive: true }).map((f) => join('test', String(f)))
    .filter((f) => f.endsWith('.test.ts') && !f.startsWith(join('test', 'fixtures'))).sort()

let times = {}
try { times = JSON.parse(readFileSync(timesFile, 'utf8')) } catch {}
// A file without a time yet goes by its size: a long file is more often a slow one.
const weight = (f) => times[f] ?? statSync(join(root, f)).size / 1000
const ownProcess = (f) => /^\/\/ test\/run\.mjs: own process\b/m.test(readFileSync(join(root, f), 'utf8').slice(0, 8192))
const alone = (f) => !f.endsWith('.test.ts') || weight(f) >= aloneS || ownProcess(f)

// Each job is a list of files for one process: a file alone, or a batch of short ones filled up
// to TEST_BATCH_S seconds of their last times, longest files first.
const jobWeight = (job) => job.reduce((s, f) => s + weight(f), 0)
const jobsToRun = []
let batch = null
for (const f of [...files].sort((a, b) => weight(b) - weight(a))) {
  if (alone(f)) { jobsToRun.push([f]); continue }
  if (batch === null || jobWeight(batch) >= batchS) jobsToRun.push(batch = [])
  batch.push(f)
}
const queue = jobsToRun.sort((a, b) => jobWeight(b) - jobWeight(a))

const totals = { total: 0, pass: 0, fail: 0, skip: 0, todo: 0 }
const failedFiles = []
const running = new Set()

function runJob (job) {
  return new Promise((resolve) => {
    const started = Date.now()
    const batched = job.length > 1
    const args = batched ? [...nodeArgs, 'test/support/batch.mjs', ...job] : [...nodeArgs, job[0]]
    const child = spawn(process.execPath, args, {
      cwd: root, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TAP_TIMEOUT: String(timeoutS * job.length), TEST_FILE_TIMEOUT: String(timeoutS), ...(batched ? { TEST_BATCH: '1' } : {}) },
    })
    const out = collect(child)
    // tap's own timeout ends a file that overruns; this is for a process that does not end then.
    const limitS = timeoutS * job.length + 30
    const killer = setTimeout(() => { out.push(Buffer.from(`\n# test/run.mjs: no exit ${limitS} s after start, killed\n`)); kill(child) }, limitS * 1000)
    child.on('close', (code, signal) => {
      clearTimeout(killer)
      running.delete(child)
      const seconds = (Date.now() - started) / 1000
      const text = Buffer.concat(out).toString('utf8')
      // The root test's last summary line: `# { total: 14, pass: 13, fail: 1, skip: 0 }`.
      const summary = [...text.matchAll(/^# \{ total: \d+.*\}$/gm)].at(-1)?.[0] ?? ''
      const count = (k) => Number(summary.match(new RegExp(`\\b${k}: (\\d+)`))?.[1] ?? 0)
      const r = { total: count('total'), pass: count('pass'), fail: count('fail'), skip: count('skip'), todo: count('todo') }
      const ok = code === 0 && signal === null && summary !== '' && r.fail === 0
      if (!ok && r.fail === 0) r.fail = 1 // a crash, a timeout or no plan: the process itself failed
      for (const k of Object.keys(totals)) totals[k] += r[k]
      const counts = `${r.pass} passed${r.skip ? `, ${r.skip} skipped` : ''}${ok ? '' : `, ${r.fail} failed, exit ${signal ?? code}`}`
      const lines = []
      if (batched) {
        // A batch's files are its root's subtests, `ok 3 - test/x.test.ts # time=812.5ms`, each
        // followed by `not ok 4 - test/x.test.ts tested nothing` when the file made no assertion.
        const results = new Map()
        for (const m of text.matchAll(/^(not )?ok \d+ - (\S+)(?: # time=([\d.]+)ms)?/gm)) {
          if (!job.includes(m[2])) continue
          const res = results.get(m[2]) ?? { ok: true, s: 0 }
          res.ok &&= m[1] === undefined
          if (m[3] !== undefined) res.s = Number(m[3]) / 1000
          results.set(m[2], res)
        }
        for (const f of job) {
          const res = results.get(f)
          if (res !== undefined) times[f] = res.s
          if (res?.ok !== true) failedFiles.push(f)
          lines.push(`${res?.ok === true ? 'ok    ' : 'FAIL  '} ${(res?.s ?? 0).toFixed(1).padStart(6)} s  ${f}${res === undefined ? '  (no result)' : ''}`)
        }
        lines.push(`${ok ? 'ok    ' : 'FAIL  '} ${seconds.toFixed(1).padStart(6)} s  the ${job.length} files above, in one process  (${counts})`)
        if (!ok && job.every((f) => !failedFiles.includes(f))) failedFiles.push(...job)
      } else {
        times[job[0]] = seconds
        if (!ok) failedFiles.push(job[0])
        lines.push(`${ok ? 'ok    ' : 'FAIL  '} ${seconds.toFixed(1).padStart(6)} s  ${job[0]}  (${counts})`)
      }
      // Indented, so its own summary line is not read as the run's.
      if (!ok) process.stdout.write(text.replace(/^/gm, '    ') + '\n')
      process.stdout.write(lines.join('\n') + '\n')
      resolve()
    })
  })
}

function checkTypes () {
  return new Promise((resolve) => {
    const started = Date.now()
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
    const child = spawn(process.execPath, [tsc, '--noEmit', '--incremental', '--tsBuildInfoFile', join('.tap', 'tsc', 'check.tsbuildinfo')], { cwd: root, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    const out = collect(child)
    child.on('close', (code) => {
      running.delete(child)
      resolve({ ok: code === 0, seconds: (Date.now() - started) / 1000, text: Buffer.concat(out).toString('utf8') })
    })
  })
}

/** What the child writes, both streams in order; the child is killed with the run if it is cut short. */
function collect (child) {
  running.add(child)
  const out = []
  child.stdout.on('data', (b) => out.push(b))
  child.stderr.on('data', (b) => out.push(b))
  return out
}

function kill (child) {
  try { process.kill(-child.pid, 'SIGKILL') } catch {}
}

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => { for (const c of running) kill(c); process.exit(130) })
}

const started = Date.now()
// Every .ts of src/ and test/ into the transpile cache first, in this one process: on a cold
// cache the first files would otherwise each load the compiler for the same modules.
for (const dir of ['src', 'test']) {
  for (const f of readdirSync(join(root, dir), { recursive: true })) {
    if (String(f).endsWith('.ts') && !String(f).endsWith('.d.ts')) await transpiled(join(root, dir, String(f)))
  }
}
// The type-check runs beside the first files rather than before them: tsc uses one core for
// seconds, while the suite keeps both busy.
const types = typecheck ? checkTypes() : null
await Promise.all(Array.from({ length: Math.min(jobs, queue.length) }, async () => {
  for (let j = queue.shift(); j !== undefined; j = queue.shift()) await runJob(j)
}))

if (types !== null) {
  const { ok, seconds, text } = await types
  if (!ok) { totals.fail++; failedFiles.push('tsc'); process.stdout.write(text.replace(/^/gm, '    ') + '\n') }
  process.stdout.write(`${ok ? 'ok    ' : 'FAIL  '} ${seconds.toFixed(1).padStart(6)} s  tsc --noEmit (the types of src/ and test/)\n`)
}

mkdirSync(dirname(timesFile), { recursive: true })
writeFileSync(timesFile, JSON.stringify(times, null, 1))
if (failedFiles.length > 0) process.stdout.write(`\nfailed: ${failedFiles.join(' ')}\n`)
process.stdout.write(`# { total: ${totals.total}, pass: ${totals.pass}, fail: ${totals.fail}, skip: ${totals.skip}, todo: ${totals.todo} }\n`)
process.stdout.write(`# ${files.length} files in ${((Date.now() - started) / 1000).toFixed(1)} s\n`)
process.stdout.write(`${totals.pass} passed, ${totals.fail} failed\n`)
process.exit(failedFiles.length > 0 ? 1 : 0)
