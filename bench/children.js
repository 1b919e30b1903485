// Child processes of a bench run: spawned with their output in a log file, tracked, and all
// killed at the end, on error, on Ctrl-C and at exit. Nothing else is ever signalled.
import { spawn } from 'node:child_process'
import { openSync, closeSync } from 'node:fs'
import { createServer } from 'node:net'
import { request } from 'node:http'

const live = new Set()

/** Starts a command; stdout+stderr go to logPath. Returns the ChildProcess, tracked. */
export function start (name, command, args, { env = process.env, logPath, cwd } = {}) {
  const fd = logPath ? openSync(logPath, 'a') : 'ignore'
  const child = spawn(command, args, { env, cwd, stdio: ['ignore', fd, fd] })
  if (typeof fd === 'number') closeSync(fd)
  child.benchName = name
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => { live.delete(child); resolve({ code, signal }) }))
  child.once('error', (err) => { process.stderr.write(`bench: ${name} failed to start: ${err.message}\n`) })
  live.add(child)
  return child
}

/** SIGTERM, then SIGKILL after graceMs; resolves once the process is gone. */
export async function stop (child, graceMs = 8000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await child.exited
  clearTimeout(timer)
}

export async function stopAll () {
  await Promise.all([...live].map((c) => stop(c)))
}

// Last resort: whatever is still running when this process exits is killed outright.
process.on('exit', () => { for (const c of live) { try { c.kill('SIGKILL') } catch {} } })
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => { process.stderr.write(`bench: ${sig}, stopping children\n`); void stopAll().finally(() => process.exit(130)) })
}

/** A port free on 127.0.0.1 right now. */
export function freePort () {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)) })
  })
}

/** Polls GET url until it answers `status` (and, if given, a body containing `contains`). */
export async function waitHttp (url, { status = 200, contains, timeoutMs = 30_000, child } = {}) {
  const deadline = Date.now() + timeoutMs
  let last = 'no answer'
  while (Date.now() < deadline) {
    if (child && (child.exitCode !== null || child.signalCode !== null)) throw new Error(`${child.benchName} exited before it was ready (${child.exitCode ?? child.signalCode})`)
    const got = await new Promise((resolve) => {
      const req = request(url, { timeout: 1000 }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d) => { body += d })
        res.on('end', () => resolve({ status: res.statusCode, body }))
      })
      req.on('error', (e) => resolve({ status: 0, body: e.message }))
      req.on('timeout', () => req.destroy(new Error('timeout')))
      req.end()
    })
    if (got.status === status && (!contains || got.body.includes(contains))) return
    last = `${got.status} ${got.body.slice(0, 120)}`
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`${url} not ready after ${timeoutMs} ms (last: ${last})`)
}

/** Runs a command to completion with inherited output; rejects on a non-zero exit. */
export function run (command, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'inherit', ...opts })
    child.once('error', reject)
    child.once('exit', (code) => code === 0 ? resolve() : reject(new Error(`${command} ${args.join(' ')} exited ${code}`)))
  })
}
