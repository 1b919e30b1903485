import { createServer, type Server, type Socket } from 'node:net'
import type { PGlite } from '@electric-sql/pglite'

// PGlite is one Postgres session. Serving it to several clients is sound only when each client
// has the session to itself for a whole exchange: from its first message until Postgres says it
// is idle again (ReadyForQuery 'I', outside any transaction). Interleaved message by message, one
// client's Bind lands between another's Parse and Execute ("portal "" does not exist"), and a
// statement slips into someone else's transaction. So clients take turns here, exchange by
// exchange; the one holding a transaction open keeps its turn until it ends.
// The session's settings are per client too, as each would have a backend of its own: one
// client's SET TimeZone (or search_path, statement_timeout, its startup parameters) is not
// another's. When the session passes to another client, the settings the last one made are put
// aside and the next one's put back.

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
/** Postgres's own bound on a client message (PQ_LARGE_MESSAGE_LIMIT): a longer length is garbage. */
const MAX_MESSAGE_BYTES = 0x3fffffff
/**
 * A client holding the session (a transaction open, or an exchange begun and not yet synced)
 * that sends nothing for this long while others wait is cut off and rolled back, as Postgres's
 * idle_in_transaction_session_timeout would: one stalled psql must not stop the sidecar's writes.
 */
export const HOLD_IDLE_MS = 15_000

export interface PgliteServer {
  port: number
  /** Clients waiting for their turn on the session. */
  waiting: () => number
  stop: () => Promise<void>
}

export async function servePglite (db: PGlite, host: string, port: number, opts: { holdIdleMs?: number } = {}): Promise<PgliteServer> {
  const turns = new Turns()
  const settings = new Settings(db)
  const clients = new Set<Client>()
  const holdIdleMs = opts.holdIdleMs ?? HOLD_IDLE_MS
  const server = createServer((socket) => {
    const client: Client = new Client(db, socket, turns, settings, holdIdleMs, () => clients.delete(client))
    clients.add(client)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => { server.off('error', reject); resolve() })
  })
  const actual = (server.address() as { port: number }).port
  return {
    port: actual,
    waiting: () => turns.queued,
    async stop () {
      for (const c of clients) c.socket.destroy()
      await closeServer(server)
      await turns.idle()
    },
  }
}

function closeServer (server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()))
}

/** Who has the session: one client at a time, the others queue in arrival order. */
class Turns {
  private holder: Client | null = null
  private waiting: Array<{ client: Client, go: () => void }> = []

  get queued (): number { return this.waiting.length }

  take (client: Client): Promise<void> {
    if (this.holder === client) return Promise.resolve()
    if (this.holder === null) { this.holder = client; return Promise.resolve() }
    return new Promise((resolve) => this.waiting.push({ client, go: resolve }))
  }

  give (client: Client): void {
    if (this.holder !== client) { this.waiting = this.waiting.filter((w) => w.client !== client); return }
    const next = this.waiting.shift()
    this.holder = next?.client ?? null
    next?.go()
  }

  /** Resolves once nobody holds or waits for the session (a stop lets the last exchange end). */
  async idle (): Promise<void> {
    while (this.holder !== null) await new Promise((r) => setImmediate(r))
  }
}

/** A client's own settings: its startup parameters, then whatever it SETs in its session. */
type Setting = [name: string, value: string]

/** Which client's settings the session holds, and the swap when another client's turn begins. */
class Settings {
  private current: Client | null = null

  constructor (private readonly db: PGlite) {}

  async enter (client: Client): Promise<void> {
    if (this.current === client) return
    const last = this.current
    let dirty = last !== null
    if (last !== null && !last.gone) {
      const { rows } = await this.db.query<{ name: string, value: string }>(
        "select name, current_setting(name) as value from pg_settings where source in ('session', 'client')")
      last.settings = rows.map((r) => [r.name, r.value])
      dirty = rows.length > 0
      // Two connections of one pool usually carry the same settings: nothing to swap.
      if (sameSettings(last.settings, client.settings)) { this.current = client; return }
    }
    if (dirty) await this.db.exec('reset all')
    for (const [name, value] of client.settings) {
      // One the session refuses (a startup parameter PGlite does not have) is left out, as
      // Postgres would have refused the connection's own SET of it.
      await this.db.query('select set_config($1, $2, false)', [name, value]).catch(() => {})
    }
    this.current = client
  }
}

function sameSettings (a: Setting[], b: Setting[]): boolean {
  if (a.length !== b.length) return false
  const key = (x: Setting[]) => x.map(([n, v]) => `${n.toLowerCase()}=${v}`).sort().join('\0')
  return key(a) === key(b)
}

/** Startup parameters that choose the connection, not a setting of its session. */
const NOT_SETTINGS = new Set(['user', 'database', 'replication', 'options'])

function startupSettings (message: Buffer): Setting[] {
  const fields = message.subarray(8).toString('utf8').split('\0')
  const settings: Setting[] = []
  for (let i = 0; i + 1 < fields.length && fields[i] !== ''; i += 2) {
    if (!NOT_SETTINGS.has(fields[i])) settings.push([fields[i], fields[i + 1]])
  }
  return settings
}

class Client {
  settings: Setting[] = []
  /** Gone: its socket closed and the session no longer holds anything of it. */
  gone = false
  /** Named statements it prepared (Parse): they live in the one session, and leave with it. */
  private statements = new Set<string>()
  private input: Buffer = Buffer.alloc(0)
  private started = false
  private busy = false
  private closed = false
  /** Postgres's transaction status from its last ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' failed one. */
  private status = 'I'
  private exchanging = false
  private output = new OutputScanner((s) => { this.status = s })
  private idleTimer: NodeJS.Timeout | null = null

  constructor (private readonly db: PGlite, readonly socket: Socket, private readonly turns: Turns, private readonly session: Settings,
    private readonly holdIdleMs: number, private readonly forget: () => void) {
    socket.setNoDelay(true)
    socket.on('data', (chunk: Buffer) => { this.stopIdleTimer(); this.input = this.input.length === 0 ? chunk : Buffer.concat([this.input, chunk]); void this.pump() })
    socket.on('error', () => {})
    socket.on('close', () => { this.stopIdleTimer(); this.closed = true; void this.pump() })
  }

  /** Holding the session and waiting for this client's bytes: it may not do so forever while others queue. */
  private startIdleTimer (): void {
    this.stopIdleTimer()
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null
      if (this.turns.queued > 0) { this.socket.destroy(); return }
      this.startIdleTimer()
    }, this.holdIdleMs)
    this.idleTimer.unref()
  }

  private stopIdleTimer (): void {
    if (this.idleTimer !== null) { clearTimeout(this.idleTimer); this.idleTimer = null }
  }

  /** Hands each whole message to Postgres in order; one pump runs per client at a time. */
  private async pump (): Promise<void> {
    if (this.busy) return
    this.busy = true
    try {
      for (;;) {
        if (this.closed) { await this.leave(); return }
        const message = this.next()
        if (message === null) { if (this.exchanging || this.status !== 'I') this.startIdleTimer(); return }
        if (message === 'skip') continue
        if (message === 'garbage') { this.socket.destroy(); this.closed = true; continue }
        if (message[0] === 0x58) { this.socket.end(); continue } // Terminate: the close ends the turn
        await this.turns.take(this)
        await this.session.enter(this)
        this.exchanging = true
        await this.db.execProtocolRawStream(new Uint8Array(message), {
          onRawData: (data) => { this.output.scan(data); if (!this.socket.destroyed) this.socket.write(Buffer.from(data)) },
        })
        // Postgres answers ReadyForQuery once per Sync, simple Query and startup: the exchange ends
        // there, and the turn with it unless a transaction is open.
        if (this.output.answeredReady) { this.output.answeredReady = false; this.exchanging = false }
        if (!this.exchanging && this.status === 'I') this.turns.give(this)
      }
    } catch {
      this.socket.destroy()
      this.closed = true
      await this.leave()
    } finally {
      this.busy = false
    }
  }

  /**
   * A client that goes away leaves the session as it found it: a transaction it left open rolled
   * back, its prepared statements gone (the next client to prepare one of that name would be
   * refused), its settings reset when the next client's turn begins.
   */
  private async leave (): Promise<void> {
    if (this.gone) return
    if (this.status !== 'I' || this.exchanging || this.statements.size > 0) {
      await this.turns.take(this)
      if (this.status !== 'I' || this.exchanging) await this.db.exec('rollback').catch(() => {})
      for (const name of this.statements) await this.db.exec(`deallocate "${name.replaceAll('"', '""')}"`).catch(() => {})
      this.status = 'I'
      this.exchanging = false
    }
    this.gone = true
    this.turns.give(this)
    this.forget()
  }

  /**
   * The next whole message, 'skip' for one answered here, 'garbage' for a length no message can
   * have (the connection is then closed, as Postgres closes it), or null until more bytes arrive.
   */
  private next (): Buffer | 'skip' | 'garbage' | null {
    const b = this.input
    if (!this.started) {
      if (b.length < 4) return null
      const len = b.readInt32BE(0)
      if (len < 8 || len > MAX_MESSAGE_BYTES) return 'garbage'
      if (b.length < len) return null
      const code = b.readInt32BE(4)
      this.input = b.subarray(len)
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) { this.socket.write('N'); return 'skip' }
      // PGlite has no backend to interrupt: a cancel is read and dropped, as Postgres ends it.
      if (code === CANCEL_REQUEST) { this.socket.end(); return 'skip' }
      // The startup message (protocol 3.0), which PGlite answers itself. Its parameters are this
      // client's settings, put in place whenever its turn begins.
      this.started = true
      this.settings = startupSettings(b.subarray(0, len))
      return b.subarray(0, len)
    }
    if (b.length < 5) return null
    const declared = b.readInt32BE(1) // counts itself: never under 4
    if (declared < 4 || declared > MAX_MESSAGE_BYTES) return 'garbage'
    const len = 1 + declared
    if (b.length < len) return null
    this.input = b.subarray(len)
    const message = b.subarray(0, len)
    if (message[0] === 0x50 && message[5] !== 0) this.statements.add(message.subarray(5, message.indexOf(0, 5)).toString('utf8')) // Parse, named
    return message
  }
}

/** Follows the server's messages across chunks, to see each ReadyForQuery and its status. */
class OutputScanner {
  answeredReady = false
  private header: Buffer = Buffer.alloc(0)
  private skip = 0
  private readyPending = false

  constructor (private readonly onStatus: (status: string) => void) {}

  scan (data: Uint8Array): void {
    let i = 0
    while (i < data.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, data.length - i)
        if (this.readyPending && n > 0 && this.skip === 1) { this.onStatus(String.fromCharCode(data[i])); this.answeredReady = true; this.readyPending = false }
        this.skip -= n
        i += n
        continue
      }
      const need = 5 - this.header.length
      const take = Math.min(need, data.length - i)
      this.header = Buffer.concat([this.header, data.subarray(i, i + take)])
      i += take
      if (this.header.length < 5) return
      this.readyPending = this.header[0] === 0x5a // 'Z'
      this.skip = this.header.readInt32BE(1) - 4
      this.header = Buffer.alloc(0)
    }
  }
}
