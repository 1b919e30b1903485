import { readFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'

// A port a test closes now and listens on later (a database that comes back, a sidecar process
// told its PORT) must not be taken in between. Ports the kernel hands out by itself, to
// listen(0) and to every outgoing connection, come from the ephemeral range; on a busy run one of
// the suite's thousands of connections can land on a port picked from that range before the
// test listens on it again (EADDRINUSE). A port below the range is only ever taken by a listener
// that names it, so it is picked there, at random, and checked free.

function ephemeralLow (): number | null {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0])
    return Number.isInteger(low) && low > 12_000 ? low : null
  } catch {
    return null
  }
}

const LOW = ephemeralLow()

function tryListen (port: number): Promise<number | null> {
  return new Promise((resolve) => {
    const s = createServer()
    s.once('error', () => resolve(null))
    s.listen(port, '127.0.0.1', () => {
      const got = (s.address() as AddressInfo).port
      s.close(() => resolve(got))
    })
  })
}

/** A free loopback port that nothing takes by chance before the caller listens on it. */
export async function freePort (): Promise<number> {
  if (LOW === null) return (await tryListen(0))!
  for (;;) {
    const port = await tryListen(10_000 + Math.floor(Math.random() * (LOW - 10_000)))
    if (port !== null) return port
  }
}
