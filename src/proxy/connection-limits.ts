import type { Server } from 'node:http'
import type { Socket } from 'node:net'

// Bounds on open client connections, so one client cannot hold every socket (and file
// descriptor) of the sidecar: `max` in all (Node closes the rest as they arrive), `perIp` from one
// address. A connection over a bound is closed at once, before a byte is read.

export interface ConnectionLimits { max: number, perIp: number }

export function limitConnections (server: Server, limits: ConnectionLimits): void {
  server.maxConnections = limits.max
  const open = new Map<string, number>()
  server.on('connection', (socket: Socket) => {
    const ip = addressOf(socket)
    const n = open.get(ip) ?? 0
    if (n >= limits.perIp) {
      socket.destroy()
      return
    }
    open.set(ip, n + 1)
    socket.once('close', () => {
      const left = (open.get(ip) ?? 1) - 1
      if (left <= 0) open.delete(ip)
      else open.set(ip, left)
    })
  })
}

/** An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d: one address, one count. */
function addressOf (socket: Socket): string {
  const a = socket.remoteAddress ?? ''
  return a.startsWith('::ffff:') ? a.slice(7) : a
}
