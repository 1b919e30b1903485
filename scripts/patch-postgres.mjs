// Mends a fault of postgres.js 3.4.x (porsager/postgres#1208, unreleased as of 3.4.10) in the
// installed copy: npm runs this after `npm ci` (package.json "postinstall"); the Docker image runs
// it after its own install.
//
// The fault: a connection that closes while a small write waits for its setImmediate either
// throws from that immediate (socket is null) or keeps the stale buffer and timer. The throw skips
// the line that resets them, so every later write on that connection, its reconnect's startup
// message included, only appends to a buffer nobody sends: the connection never connects again
// (CONNECT_TIMEOUT forever) and a pool whose connections all took the fault is blind for good.
// Postgres cutting the export's connections under load does it (test/postgres-patch.test.ts).
//
// A second fault of the same kind: each new connection first fetches the array types, from a
// socket handler that drops the promise. When Postgres ends that backend meanwhile (57P01,
// a reset), nobody awaits the rejection and Node makes it an uncaught exception; the sidecar's
// crash guard then exits. The connection's own close already settles or retries its queries.
//
// A third: a connection opens for the query that asked for it (its `initial`), and when that
// query is cancelled meanwhile (a deadline of src/db/bounded.ts passing while Postgres is slow to
// accept, or the reconnect's backoff runs), execute() skips it and ReadyForQuery returns without
// onopen(): the connection stays in the pool's `connecting` queue, open and idle, for good. Its
// queries then wait in the pool's queue, which only onopen() or onclose() drains; with both of a
// pool's connections so, every query misses its deadline until Postgres closes them.
//
// A fourth: a connection given to a transaction (sql.begin, its savepoints) or to sql.reserve()
// keeps that scope's statements in a queue of its own while one is in flight (with prepare:
// false, any statement with a parameter). A deadline passing there rejects a statement and marks
// it cancelled without taking it off that queue; at the next ReadyForQuery the connection takes
// it, execute() skips it and sends nothing, and nothing ever answers: the statements behind it,
// the ROLLBACK included, wait for good, and the connection never returns to the pool.
//
// A fifth (porsager/postgres#1189, #1218): sql.begin() reserves its connection from a hook that
// execute() ran last in the chain saying whether the connection takes more queries, so it was
// skipped when BEGIN was the query that filled the pipeline (max_pipeline, 100 in flight: a busy
// pool) or met a full socket buffer. Postgres opens the transaction, the connection goes back to
// the pool (sql.begin fails UNSAFE_TRANSACTION, or with max 1 a TypeError), and the pool's next
// queries run inside that transaction: they report success and are undone when it ends. A ledger
// row lost without an error. (Running the hook first but still letting the pool pipeline onto
// the connection, as #1211 does, hands the pool's next query to the transaction the same way.)
//
// A sixth: a socket error (ECONNRESET: Postgres ended the backend, pg_terminate_backend, while
// the pool wrote to it) settles the connection's queries at once, but the socket's 'close' comes
// a turn later, and meanwhile the connection is still in the pool's `busy` queue: the pool gives
// it more queries, which go to `sent` (its last query, already settled, is still `query`).
// closed(hadError) then settles nothing, so they stay in `sent`, with `query` and Postgres's last
// ErrorResponse (57P01), across the reconnect. On the new backend the startup's ReadyForQuery
// takes that stale error for the connection's first query (it fails with 57P01, never sent), then
// takes the next of `sent` as the query in flight: the connection waits for good for the answer
// to a query that was never sent on it, and never leaves the pool's `connecting` queue. With both
// of a pool's connections so, every query waits in the pool's queue until its deadline, for good.
//
// A seventh: a transaction (sql.begin, its savepoints) or sql.reserve() sends its statements
// straight to its connection, and its ROLLBACK after a failure, without asking whether that
// connection still is its own. When Postgres ends the backend mid-transaction (pg_terminate_backend),
// the close moves the connection to the pool's `closed` queue; the scope's ROLLBACK then comes to
// execute() on a connection with no socket: it becomes the connection's query, the write fails,
// and the scope moves the connection to `full` unless the pool may pipeline onto it. In `full` it
// is never connected again, and never answers: with one query in flight per connection
// (src/db/connect.ts), every such transaction takes a connection out of the pool for good. When
// the pool has already begun connecting it again for a waiting query (its socket not there yet,
// during the backoff), the ROLLBACK becomes the query of the new session instead, which then
// takes the answer to its first real query for the ROLLBACK's and waits for good.
//
// The mend, in each build of connection.js (ESM, CommonJS, Workers): a closed connection drops
// what it had buffered, a write with no socket settles its queries with CONNECTION_CLOSED
// instead of throwing, the array types' rejection is caught, a connection whose first query
// was cancelled goes on to onopen() as after any query, a reserved connection that skips a
// cancelled query goes on to the next of its queue, and a query with the hook (BEGIN) runs it
// once written, whatever the pipeline, and takes no query behind it (the pool's go() and
// onopen() move the connection to `full`; BEGIN's answer gives it to the transaction), and a
// connection that closes, with or without a socket error, settles every query it still holds
// (CONNECTION_CLOSED) and forgets the query and error of the backend it lost, and a connection
// with no socket refuses what a scope still sends it (CONNECTION_CLOSED) and stays where the pool
// put it (nothing else calls execute() before the socket is there).
// Idempotent; fails loudly when the text it mends is not there (another version: see whether it
// still needs mending). src/db/postgres-mend.ts counts the marks at boot: keep its EDITS in step.
import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const MARK = '/* usage-proxy: porsager/postgres#1208 */'

export const EDITS = [
  {
    what: 'closed() drops the buffered write with its socket',
    from: '    clearImmediate(nextWriteTimer)\n    socket.removeListener(\'data\', data)',
    to: `    clearImmediate(nextWriteTimer)\n    chunk = nextWriteTimer = null ${MARK}\n    socket.removeListener('data', data)`,
  },
  {
    what: 'nextWrite() with no socket settles instead of throwing',
    from: '  function nextWrite(fn) {\n',
    to: `  function nextWrite(fn) {\n    if (!socket) { ${MARK}\n      nextWriteTimer !== null && clearImmediate(nextWriteTimer)\n      chunk = nextWriteTimer = null\n      error(Errors.connection('CONNECTION_CLOSED', options))\n      return false\n    }\n`,
  },
  {
    what: 'the array types fetched on a new connection: a rejection is not dropped',
    from: '        return fetchArrayTypes()\n',
    to: `        return fetchArrayTypes().catch(() => {}) ${MARK}\n`,
  },
  {
    what: 'a connection whose first query was cancelled while it opened joins the pool',
    from: '      initial && !initial.reserve && execute(initial)\n      options.shared.retries = retries = 0\n      initial = null\n      return\n',
    to: `      const cancelled = initial && initial.cancelled ${MARK}\n      initial && !initial.reserve && execute(initial)\n      options.shared.retries = retries = 0\n      initial = null\n      if (!cancelled)\n        return\n`,
  },
  {
    what: 'a reserved connection skips a query cancelled while it waited in the queue and goes on to the next',
    from: '    if (q.cancelled)\n      return\n',
    to: `    if (q.cancelled) ${MARK}\n      return connection.reserved ? connection.reserved() : undefined\n`,
  },
  {
    what: 'BEGIN reserves its connection even when it fills the pipeline, and nothing is pipelined behind it',
    from: '      build(q)\n      return write(toBuffer(q))\n        && !q.describeFirst\n        && !q.cursorFn\n        && sent.length < max_pipeline\n        && (!q.options.onexecute || q.options.onexecute(connection))\n',
    to: `      build(q)\n      const written = write(toBuffer(q)) ${MARK}\n      if (q.options.onexecute) {\n        socket && q.options.onexecute(connection)\n        return false\n      }\n      return written\n        && !q.describeFirst\n        && !q.cursorFn\n        && sent.length < max_pipeline\n`,
  },
  {
    what: 'a connection closed after a socket error settles the queries the pool gave it meanwhile, and forgets its last answer',
    from: "    !hadError && (query || sent.length) && error(Errors.connection('CONNECTION_CLOSED', options, socket))\n",
    to: `    if (query || sent.length) ${MARK}\n      error(Errors.connection('CONNECTION_CLOSED', options, socket))\n    query = errorResponse = null\n`,
  },
  {
    what: 'a connection closed under a transaction settles the statements its scope still sends, and stays closed',
    from: "  function execute(q) {\n    if (terminated)\n      return queryError(q, Errors.connection('CONNECTION_DESTROYED', options))\n",
    to: `  function execute(q) {\n    if (terminated)\n      return queryError(q, Errors.connection('CONNECTION_DESTROYED', options))\n\n    if (!socket) ${MARK}\n      return (queryError(q, Errors.connection('CONNECTION_CLOSED', options)), true)\n`,
  },
]

// In index.js: a transaction (sql.begin and its savepoints) and sql.reserve() stop using their
// connection once it closes. The close hands the connection back to the pool, which may already
// be connecting it again for a waiting query; a statement the scope still sends (the function
// caught an error and went on, or the ROLLBACK after a failure) then ran on the new session, in
// autocommit outside its transaction, or, written ahead of that session's startup, took another
// query's answer. And release() of a reserved connection that closed put it back in the pool
// with no socket. Now the close rejects what waits in the scope's queue and everything the scope
// sends after it (CONNECTION_CLOSED), and release() leaves a closed connection to the pool.
export const INDEX_EDITS = [
  {
    what: 'a transaction remembers that its connection closed',
    from: '      , connection\n      , prepare = null\n',
    to: `      , connection\n      , prepare = null\n      , gone = null ${MARK}\n`,
  },
  {
    what: 'the close of a transaction\'s connection rejects the statements waiting in its queue',
    from: '        new Promise((_, reject) => connection.onclose = reject)\n',
    to: `        new Promise((_, reject) => connection.onclose = e => { ${MARK}\n          gone = Errors.connection('CONNECTION_CLOSED', options)\n          while (queries.length) queries.shift().reject(gone)\n          reject(e)\n        })\n`,
  },
  {
    what: 'a transaction whose connection closed sends nothing more on it',
    from: '        q.catch(e => uncaughtError || (uncaughtError = e))\n        c.queue === full\n',
    to: `        q.catch(e => uncaughtError || (uncaughtError = e))\n        gone ? q.reject(gone) : c.queue === full ${MARK}\n`,
  },
  {
    what: 'a reserved connection that closes rejects its queue and what is sent after, and release() leaves it to the pool',
    from: '    const sql = Sql(handler)\n    sql.release = () => {\n      c.reserved = null\n      onopen(c)\n    }\n',
    to: `    let gone = null ${MARK}\n    c.onclose = () => {\n      gone = Errors.connection('CONNECTION_CLOSED', options)\n      while (queue.length) queue.shift().reject(gone)\n    }\n    const sql = Sql(handler)\n    sql.release = () => {\n      if (gone) return\n      c.onclose = null\n      c.reserved = null\n      onopen(c)\n    }\n`,
  },
  {
    what: 'a reserved connection that closed sends nothing more on it',
    from: '    function handler(q) {\n      c.queue === full\n        ? queue.push(q)\n',
    to: `    function handler(q) {\n      gone ? q.reject(gone) : c.queue === full ${MARK}\n        ? queue.push(q)\n`,
  },
]

/** Mends one connection.js (or, given INDEX_EDITS, index.js) text; an edit already made is left as it is. */
export function mend (text, file, edits = EDITS) {
  for (const e of edits) {
    if (text.includes(e.to)) continue
    if (text.split(e.from).length !== 2) throw new Error(`${file}: the text to mend (${e.what}) is not there once; is postgres another version?`)
    text = text.replace(e.from, e.to)
  }
  return text
}

function main () {
  let pkg
  try {
    pkg = join(dirname(fileURLToPath(import.meta.resolve('postgres'))), '..') // …/postgres/src/index.js
  } catch {
    return // an install without postgres (none that runs the sidecar)
  }
  const version = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8')).version
  let mended = 0
  for (const build of ['src', 'cjs/src', 'cf/src']) {
    for (const [name, edits] of [['connection.js', EDITS], ['index.js', INDEX_EDITS]]) {
      const file = join(pkg, build, name)
      if (!existsSync(file)) continue
      const before = readFileSync(file, 'utf8')
      const after = mend(before, file, edits)
      if (after !== before) { writeFileSync(file, after); mended++ }
    }
  }
  if (mended > 0) console.log(`usage-proxy: mended postgres ${version} (porsager/postgres#1208) in ${mended} file(s)`)
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  try { main() } catch (err) { console.error(`usage-proxy: ${err.message}`); process.exit(1) }
}
