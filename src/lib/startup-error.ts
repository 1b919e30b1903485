// A start-up failure that retrying or a stack trace will not help with: its message names the
// setting to change (PORT, EMBEDDED_DB_PORT, DATABASE_URL, ...) and is printed as one line.

export class StartupError extends Error {
  constructor (message: string, readonly variable: string) {
    super(message)
    this.name = 'StartupError'
  }
}

/** Opens a listener, turning "address in use" and "cannot bind" into a line naming the variable. */
export function listenError (err: unknown, variable: string, host: string, port: number): unknown {
  const code = (err as { code?: string })?.code
  if (code === 'EADDRINUSE') return new StartupError(`${variable}: port ${port} on ${host} is already in use (EADDRINUSE): stop what holds it or set ${variable} to a free port`, variable)
  if (code === 'EACCES') return new StartupError(`${variable}: not allowed to listen on port ${port} on ${host} (EACCES): use a port above 1023`, variable)
  if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') return new StartupError(`${variable}: cannot listen on ${host}:${port} (${code}): the address is not one of this machine's`, variable)
  return err
}
