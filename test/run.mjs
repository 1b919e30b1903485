#!/usr/bin/env node
// `npm test`'s runner: each test file in a node process of its own, as tap's runner does, without
// what that runner adds to every process for coverage. tap's runner preloads
// @tapjs/processinfo into each test process (a module hook that copies every loaded module's text
// to the main thread and records its line lengths), about 0.6 s of CPU per file on this 2-core
// machine: a third of the suite's time, for coverage `npm test` does not measure. Coverage runs
// keep tap's runner (`npm run test:coverage`), and so does `npx tap test/x.test.ts`.
//
// The transpile cache is filled before the first file starts (test/support/ts-cache.mjs).
// Files start longest first, by the times of the last run (.tap/test-times.json), so the slowest
// file does not start last. A passing file prints one line; a failing one prints all it wrote.
// The last line is `N passed, N failed`, counted from each file's own tap summary.
//
// Usage: node test/run.mjs [files...]   (jobs and timeout: package.json "tap", TAP_TIMEOUT;
// TEST_JOBS and TEST_TIMES_FILE override the jobs and where the times are kept)
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

const files = process.argv.length > 2
  ? process.argv.slice(2).map((f) => relative(root, join(process.cwd(), f)))
  : readdirSync(join(root, 'test'), { recursive: true }).map((f) => join('test', String(f))).filter((f) => f.endsWith('.test.ts')).sort()

let times = {}
try { times = JSON.parse(readFileSync(timesFile, 'utf8')) } catch {}
// A file without a time yet goes by its size: a long file is more often a slow one.
const weight = (f) => times[f] ?? statSync(join(root, f)).size / 1000
const queue = [...files].sort((a, b) => weight(b) - weight(a))

const totals = { total: 0, pass: 0, fail: 0, skip: 0, todo: 0 }
const failedFiles = []
const running = new Set()

function runFile (file) {
  return new Promise((resolve) => {
    const started = Date.now()
    const child = spawn(process.execPath, [...nodeArgs, file], {
      cwd: root, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TAP_TIMEOUT: String(timeoutS) },
    })
    running.add(child)
    const out = []
    child.stdout.on('data', (b) => out.push(b))
    child.stderr.on('data', (b) => out.push(b))
    // tap's own timeout ends a file that overruns; this is for a process that does not end then.
    const killer = setTimeout(() => { out.push(Buffer.from(`\n# test/run.mjs: no exit ${timeoutS + 30} s after start, killed\n`)); kill(child) }, (timeoutS + 30) * 1000)
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
      if (!ok && r.fail === 0) r.fail = 1 // a crash, a timeout or no plan: the file itself failed
      for (const k of Object.keys(totals)) totals[k] += r[k]
      times[file] = seconds
      const line = `${ok ? 'ok    ' : 'FAIL  '} ${seconds.toFixed(1).padStart(6)} s  ${file}  (${r.pass} passed${r.skip ? `, ${r.skip} skipped` : ''}${ok ? '' : `, ${r.fail} failed, exit ${signal ?? code}`})`
      if (!ok) {
        failedFiles.push(file)
        // Indented, so its own summary line is not read as the run's.
        process.stdout.write(text.replace(/^/gm, '    ') + '\n')
      }
      process.stdout.write(line + '\n')
      resolve()
    })
  })
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
await Promise.all(Array.from({ length: Math.min(jobs, queue.length) }, async () => {
  for (let f = queue.shift(); f !== undefined; f = queue.shift()) await runFile(f)
}))

mkdirSync(dirname(timesFile), { recursive: true })
writeFileSync(timesFile, JSON.stringify(times, null, 1))
if (failedFiles.length > 0) process.stdout.write(`\nfailed: ${failedFiles.join(' ')}\n`)
process.stdout.write(`# { total: ${totals.total}, pass: ${totals.pass}, fail: ${totals.fail}, skip: ${totals.skip}, todo: ${totals.todo} }\n`)
process.stdout.write(`# ${files.length} files in ${((Date.now() - started) / 1000).toFixed(1)} s\n`)
process.stdout.write(`${totals.pass} passed, ${totals.fail} failed\n`)
process.exit(failedFiles.length > 0 ? 1 : 0)
