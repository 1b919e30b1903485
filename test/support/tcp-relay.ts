import { createServer, connect, type Server, type Socket } from 'node:net'
import postgres from 'postgres'
import { freePort } from './ports.js'
import { poolOptions, type Sql } from '../../src/db/connect.js'

// A loopback TCP relay between the sidecar and Postgres that a test can cut (every connection
// dropped, new ones refused) and restore on the same port: a database outage on demand.

export class TcpRelay {
  port = 0
  private server: Server | null = null
  private readonly sockets = new Set<Socket>()
  private paused = false
  private held: Array<[Socket, Buffer]> = []
  private frozen = false
  /** Connections forwarded so far, numbered from 1 in order: a client's reconnect is a new number. */
  connections = 0
  /** How many chunks pause() held of what each connection's client sent, by its number. */
  readonly heldFromClient = new Map<number, number>()

  constructor (private readonly targetPort: number, private readonly targetHost = '127.0.0.1') {}

  get url (): string { return `postgres://postgres@127.0.0.1:${this.port}` }

  /** Reserves a port without accepting connections yet (Postgres "down" from the start). */
  async reserve (): Promise<void> {
    this.port = await freePort()
  }

  async open (): Promise<void> {
    if (this.server) return
    const server = createServer((client) => {
      if (this.frozen) { this.sockets.add(client); client.on('error', () => {}); return } // accepted, never answered
      const upstream = connect(this.targetPort, this.targetHost)
      const number = ++this.connections
      this.sockets.add(client).add(upstream)
      const drop = () => { client.destroy(); upstream.destroy(); this.sockets.delete(client); this.sockets.delete(upstream) }
      client.on('error', drop).on('close', drop)
      upstream.on('error', drop).on('close', drop)
      // Forwarded by hand, not piped: pause() can then hold bytes without closing anything.
      const forward = (from: Socket, to: Socket): void => {
        from.on('data', (d: Buffer) => {
          if (!this.paused) { to.write(d); return }
          this.held.push([to, d])
          if (from === client) this.heldFromClient.set(number, (this.heldFromClient.get(number) ?? 0) + 1)
        })
      }
      forward(client, upstream)
      forward(upstream, client)
    })
    // Cut and opened again on the same port: one the kernel does not hand out meanwhile (ports.ts).
    if (this.port === 0) this.port = await freePort()
    await new Promise<void>((r) => server.listen(this.port, '127.0.0.1', r))
    this.server = server
  }

  /**
   * Postgres stops answering: connections stay open and new ones are accepted, but no byte goes
   * through either way until resume(). A database that hangs rather than one that is gone.
   */
  pause (): void { this.paused = true }

  /** Delivers what was held, in order, and forwards again. */
  resume (): void {
    this.paused = false
    const held = this.held
    this.held = []
    for (const [to, d] of held) if (!to.destroyed) to.write(d)
  }

  /**
   * A database that stops answering without closing anything (a partition, a hung server): bytes
   * sent are never delivered, new connections are accepted and never answered. `cut` then `open`
   * ends it.
   */
  freeze (): void {
    this.frozen = true
    for (const s of this.sockets) { s.unpipe(); s.pause() }
  }

  /** Refuses new connections at once; those open go on as they were (cut() ends them). */
  refuseNew (): void {
    this.server?.close()
    this.server = null
  }

  /**
   * Resets every connection (a TCP RST, as a backend that dies while its client writes): the
   * client reads ECONNRESET, a socket error, rather than an orderly close. New ones are accepted.
   */
  reset (): void {
    for (const s of this.sockets) s.resetAndDestroy()
    this.sockets.clear()
  }

  /** Drops every connection mid-whatever and refuses new ones. */
  async cut (): Promise<void> {
    const server = this.server
    this.server = null
    this.frozen = false
    for (const s of this.sockets) s.destroy()
    this.sockets.clear()
    if (server) await new Promise<void>((r) => server.close(() => r()))
  }
}

/**
 * A pool of the sidecar's options behind a relay to the test database, for a test to fault the
 * relay; its teardown ends the pool, then closes the relay and drops the database.
 */
export async function relayPool (t: { teardown: (fn: () => Promise<void>) => void }, db: { port: number, name: string, drop: () => Promise<void> }, options: postgres.Options<{}> = poolOptions(1)): Promise<{ relay: TcpRelay, pool: Sql }> {
  const relay = new TcpRelay(db.port)
  await relay.reserve()
  await relay.open()
  const pool = postgres(`${relay.url}/${db.name}`, options)
  t.teardown(async () => { await pool.end({ timeout: 0 }); await relay.cut(); await db.drop() })
  return { relay, pool }
}
