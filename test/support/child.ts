import { spawn, type ChildProcess } from 'node:child_process'
import { request } from 'undici'

// The sidecar as a real process (dist/main.js, built by `npm test` before tap runs): for what
// only a process can show: signals, SIGKILL, and the process-wide crash guard.

export interface Child {
  proc: ChildProcess
  url: string
  logs: () => Array<Record<string, any>>
  exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
  waitReady: (timeoutMs?: number) => Promise<void>
}

export function spawnSidecar (env: Record<string, string | undefined>, port: number): Child {
  const proc = spawn(process.execPath, ['dist/main.js'], {
    env: { PATH: process.env.PATH, ...env, PORT: String(port), HOST: '127.0.0.1' } as NodeJS.ProcessEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  proc.stdout!.on('data', (c) => { out += c })
  proc.stderr!.on('data', (c) => { out += c })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((r) => proc.once('exit', (code, signal) => r({ code, signal })))
  const url = `http://127.0.0.1:${port}`
  return {
    proc,
    url,
    logs: () => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)),
    exited,
    async waitReady (timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs
      while (Date.now() < deadline) {
        if (proc.exitCode !== null) throw new Error(`sidecar exited ${proc.exitCode}: ${out}`)
        try {
          const r = await request(`${url}/readyz`)
          await r.body.dump()
          if (r.statusCode === 200) return
        } catch { /* not listening yet */ }
        await new Promise((r) => setTimeout(r, 50))
      }
      throw new Error(`sidecar not ready in ${timeoutMs} ms: ${out}`)
    },
  }
}

export async function freePort (): Promise<number> {
  const { createServer } = await import('node:net')
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const port = (s.address() as import('node:net').AddressInfo).port
  await new Promise<void>((r) => s.close(() => r()))
  return port
}
