import t from 'tap'
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { isDroppedSocketRejection, isPostgresSocketRace } from '../src/lib/crash-guard.js'

const raceStack = "TypeError: Cannot read properties of null (reading 'write')\n    at nextWrite (/app/node_modules/postgres/src/connection.js:255:22)\n    at process.processImmediate (node:internal/timers:483:21)"

t.test('recognizes the postgres.js socket race and nothing else', async (t) => {
  const e = new TypeError("Cannot read properties of null (reading 'write')")
  e.stack = raceStack
  t.ok(isPostgresSocketRace(e))
  const other = new TypeError("Cannot read properties of null (reading 'write')")
  other.stack = "TypeError: x\n    at mine (/app/dist/proxy/metered.js:1:1)"
  t.notOk(isPostgresSocketRace(other), 'same message from our own code is a real bug')
  t.notOk(isPostgresSocketRace(new Error('boom')))
})

// The guard is process-wide, so it is exercised in a process of its own.
const script = (stack: string) => `
  import { installCrashGuard } from './dist/lib/crash-guard.js'
  import { createLogger } from './dist/lib/log.js'
  installCrashGuard(createLogger('info'))
  // The timer is set in the turn that throws: it can only fire after the throw, however slow the machine.
  setImmediate(() => {
    setTimeout(() => { console.log('still alive'); process.exit(0) }, 100)
    const e = new TypeError("Cannot read properties of null (reading 'write')"); e.stack = ${JSON.stringify(stack)}; throw e
  })
`

t.test('the race is logged and survived; any other uncaught error exits 1', async (t) => {
  const survived = spawnSync(process.execPath, ['--input-type=module', '-e', script(raceStack)], { encoding: 'utf8', timeout: 10_000 })
  t.equal(survived.status, 0)
  t.match(survived.stdout, /dropped mid-write/)
  t.match(survived.stdout, /still alive/)
  const died = spawnSync(process.execPath, ['--input-type=module', '-e', script('TypeError: x\n    at mine (/app/dist/x.js:1:1)')], { encoding: 'utf8', timeout: 10_000 })
  t.equal(died.status, 1)
  t.match(died.stdout, /uncaught exception; exiting/)
  t.notMatch(died.stdout, /still alive/)
})

// The guard matches a file path and a property read inside postgres.js (pinned exactly in
// package.json): a release that moves either makes the guard let the race crash the process.
t.test('the guarded internals are where the installed postgres.js has them', async (t) => {
  const entry = fileURLToPath(import.meta.resolve('postgres'))
  const connection = join(dirname(entry), 'connection.js')
  const source = readFileSync(connection, 'utf8')
  const pinned = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'package.json'), 'utf8')).dependencies.postgres
  t.equal(JSON.parse(readFileSync(join(dirname(entry), '..', 'package.json'), 'utf8')).version, pinned, 'the installed version is the pinned one')
  t.match(source, /setImmediate\(nextWrite\)/, 'the write is deferred to a setImmediate')
  const nextWrite = /function nextWrite\([^)]*\) \{([\s\S]*?)\n  \}\n/.exec(source)?.[1] ?? ''
  t.match(nextWrite, /\bsocket\.write\(/, 'nextWrite reads .write of the socket that closing sets to null')
  t.match(source, /^\s+socket = null$/m, 'closing sets it to null')
  // The error V8 throws there, from the file the process loads, is the one the guard lets pass.
  const socket = null as unknown as { write: () => void }
  let err: unknown
  try { socket.write() } catch (e) { err = e }
  ;(err as Error).stack = `${(err as Error).message}\n    at nextWrite (${connection}:255:22)\n    at process.processImmediate (node:internal/timers:483:21)`
  t.ok(isPostgresSocketRace(err), `recognized at ${connection}`)
})

const resetStack = 'Error: read ECONNRESET\n    at TCP.onStreamRead (node:internal/stream_base_commons:218:20)'
const reset = (stack = resetStack): Error => Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET', errno: -104, syscall: 'read', stack })

t.test('an unawaited bare socket error is recognized; one thrown, or raised in our code, is not', async (t) => {
  t.ok(isDroppedSocketRejection(reset(), 'unhandledRejection'))
  t.notOk(isDroppedSocketRejection(reset(), 'uncaughtException'), 'an unhandled error event stays fatal')
  t.notOk(isDroppedSocketRejection(reset(`${resetStack}\n    at liveKeys (/app/dist/keys/store.js:1:1)`), 'unhandledRejection'), 'a query of ours left unawaited is a real bug')
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:41765'), { code: 'ECONNREFUSED', syscall: 'connect',
    stack: 'Error: connect ECONNREFUSED 127.0.0.1:41765\n    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1611:16)' })
  t.ok(isDroppedSocketRejection(refused, 'unhandledRejection'), 'a reconnect refused while Postgres is away')
  t.notOk(isDroppedSocketRejection(new Error('read ECONNRESET'), 'unhandledRejection'), 'no errno: not a socket error')
  t.notOk(isDroppedSocketRejection(Object.assign(reset(), { code: 'ENOENT' }), 'unhandledRejection'))
})

const rejectScript = (stack: string) => `
  import { installCrashGuard } from './dist/lib/crash-guard.js'
  import { createLogger } from './dist/lib/log.js'
  installCrashGuard(createLogger('info'))
  Promise.reject(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET', errno: -104, syscall: 'read', stack: ${JSON.stringify(stack)} }))
  setTimeout(() => { console.log('still alive'); process.exit(0) }, 100)
`

t.test('a connection reset nobody awaited is survived; a rejection from our code exits 1', async (t) => {
  const survived = spawnSync(process.execPath, ['--input-type=module', '-e', rejectScript(resetStack)], { encoding: 'utf8', timeout: 10_000 })
  t.equal(survived.status, 0)
  t.match(survived.stdout, /reset while it was being set up/)
  t.match(survived.stdout, /still alive/)
  const died = spawnSync(process.execPath, ['--input-type=module', '-e', rejectScript(`${resetStack}\n    at mine (/app/dist/x.js:1:1)`)], { encoding: 'utf8', timeout: 10_000 })
  t.equal(died.status, 1)
  t.match(died.stdout, /uncaught exception; exiting/)
})

// Why the guard is needed: the installed postgres.js starts the array-type query from a message
// handler that drops its promise, and that query's rejection carries no origin frames.
t.test('postgres.js drops the promise of its per-connection array-type fetch', async (t) => {
  const source = readFileSync(join(dirname(fileURLToPath(import.meta.resolve('postgres'))), 'connection.js'), 'utf8')
  t.match(source, /return fetchArrayTypes\(\)/, 'started from the ReadyForQuery handler, whose result nobody reads')
  t.match(source, /async function fetchArrayTypes\(\) \{[^}]*await new Query\(\[/, 'an untagged query: its error gets no origin frames')
})
