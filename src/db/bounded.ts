import type { Sql } from './connect.js'

// Every query gets a deadline on the client: the wait for a connection and for the answer
// together. A server-side statement_timeout is session state (a pooler in transaction mode
// hands the next transaction another backend, without it) and cannot help when the network,
// not the server, is what is stuck. At the deadline the caller gets an error at once and the
// query is cancelled: taken off the pool's queue if it never got a connection, else a cancel
// request goes to the server (PgBouncer forwards it to the right backend).

/** The error a query gets at its deadline; `code` reads like a SQLSTATE so logs group it. */
export class DeadlineError extends Error {
  readonly code = 'DEADLINE'
  constructor (readonly ms: number, readonly setting: string) {
    super(`postgres did not answer within ${ms} ms (${setting})`)
    this.name = 'DeadlineError'
  }
}

interface PendingQuery extends Promise<unknown> {
  handle: () => Promise<void>
  reject: (err: unknown) => void
  cancel: () => unknown
  canceller: ((q: PendingQuery) => Promise<void>) | null
  cursor: (...args: unknown[]) => unknown
  cursorFn?: (rows: unknown) => unknown
  state?: unknown
}

function isQuery (q: unknown): q is PendingQuery {
  return q instanceof Promise && typeof (q as Partial<PendingQuery>).handle === 'function' && typeof (q as Partial<PendingQuery>).cancel === 'function'
}

/**
 * Cancels a query: taken off the pool's queue if it never got a connection, else a cancel request
 * goes to the server. postgres.js's own cancel() drops the promise of that request, so a server
 * out of reach would make it an unhandled rejection; its canceller is called here, and caught.
 */
export function cancelQuery (q: unknown): void {
  if (!isQuery(q)) return
  const canceller = q.canceller
  q.canceller = null
  if (canceller) canceller(q).catch(() => {})
}

/**
 * Arms a query: its timer starts when it is first executed (a fragment nested in another query
 * never is). A cursor's deadline is per batch, so a long export to a slow client is not cut off
 * while each fetch still is bounded.
 */
function arm (q: PendingQuery, ms: number, setting: string): void {
  const handle = q.handle.bind(q)
  let timer: NodeJS.Timeout | null = null
  let settled = false
  const expire = (): void => {
    timer = null
    if (settled) return
    settled = true
    const err = new DeadlineError(ms, setting)
    // Still queued for a connection: rejected first, so the caller reads this deadline rather
    // than postgres.js's generic cancel. Sent: cancelled first, while postgres.js still counts it
    // active (its reject clears that, and an inactive query is only marked for a later cancel).
    if (!q.state) q.reject(err)
    cancelQuery(q)
    q.reject(err)
  }
  const restart = (): void => {
    if (settled) return
    if (timer) clearTimeout(timer)
    timer = setTimeout(expire, ms)
    timer.unref()
  }
  q.handle = () => {
    if (timer === null && !settled) {
      restart()
      // Cleared however the query ends; the handler never throws (the caller sees the rejection).
      Promise.prototype.then.call(q, () => { settled = true; if (timer) clearTimeout(timer) }, () => { settled = true; if (timer) clearTimeout(timer) })
    }
    return handle()
  }
  const cursor = q.cursor.bind(q)
  q.cursor = (...args: unknown[]) => {
    const it = cursor(...args) as { [Symbol.asyncIterator]?: () => { next: () => Promise<unknown>, return: () => unknown } }
    if (!it || typeof it[Symbol.asyncIterator] !== 'function') return it
    return {
      [Symbol.asyncIterator]: () => {
        const inner = it[Symbol.asyncIterator]!()
        return {
          next: () => {
            restart()
            const batch = inner.next()
            // postgres.js asks q.cursorFn, once a batch is in, whether to fetch on or close; it
            // waits for the consumer's next call to answer. A batch that arrives after its deadline
            // (the cancel came too late, or never reached Postgres) has a consumer that was told it
            // failed and asks no more: the portal is closed at once, or the connection would wait
            // for that call for good.
            const ask = q.cursorFn
            if (typeof ask === 'function') {
              q.cursorFn = (rows: unknown) => {
                const answer = ask(rows)
                if (settled) inner.return()
                return answer
              }
            }
            return batch.finally(() => { if (timer) { clearTimeout(timer); timer = null } })
          },
          return: () => { settled = true; if (timer) clearTimeout(timer); return inner.return() },
        }
      },
    }
  }
}

/**
 * The pool (or a transaction) with a deadline on every query made through it: tagged templates,
 * `unsafe`, and transactions, whose statements are bounded one by one and whose whole run (the
 * wait for a connection and the commit included) is bounded by `txMs`.
 */
export function bounded (sql: Sql, ms: number, setting = 'DATABASE_QUERY_TIMEOUT_MS', txMs = ms * 2): Sql {
  const target = sql as unknown as Record<string | symbol, unknown> & ((...a: unknown[]) => unknown)
  return new Proxy(sql, {
    apply (_t, thisArg, args: unknown[]) {
      const q = Reflect.apply(target, thisArg, args)
      if (isQuery(q)) arm(q, ms, setting)
      return q
    },
    get (t, prop, receiver) {
      if (prop === 'unsafe') {
        return (...args: unknown[]) => {
          const q = (target.unsafe as (...a: unknown[]) => unknown)(...args)
          if (isQuery(q)) arm(q, ms, setting)
          return q
        }
      }
      if (prop === 'begin' || prop === 'savepoint') {
        const begin = Reflect.get(t, prop, receiver) as ((...a: unknown[]) => Promise<unknown>) | undefined
        if (typeof begin !== 'function') return begin
        return (...args: unknown[]) => {
          const fn = args.pop() as (tx: Sql) => unknown
          let late = false
          const run = begin.call(t, ...args, async (tx: Sql) => {
            // A transaction that got its connection after its caller gave up does nothing.
            if (late) throw new DeadlineError(txMs, setting)
            const body = fn(bounded(tx, ms, setting, txMs))
            const result: unknown = await (Array.isArray(body) ? Promise.all(body) : body)
            // Its caller was told it failed: it rolls back rather than commit behind their back.
            // (A deadline that passes while COMMIT itself is on its way leaves the outcome open.)
            if (late) throw new DeadlineError(txMs, setting)
            return result
          })
          let timer: NodeJS.Timeout | undefined
          const deadline = new Promise<never>((_resolve, reject) => {
            timer = setTimeout(() => { late = true; reject(new DeadlineError(txMs, setting)) }, txMs)
            timer.unref()
          })
          run.catch(() => {}) // its failure after the deadline is nobody's to hear
          return Promise.race([run, deadline]).finally(() => clearTimeout(timer))
        }
      }
      return Reflect.get(t, prop, receiver)
    },
  }) as Sql
}
