import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, isAbsolute, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'
import { blankDataDir } from './db.js'

// A sidecar process on the embedded database opens DATA_DIR/pglite when it holds a data directory,
// and runs PGlite's initdb there when it does not: seconds of WASM work (about 6 s of CPU) that only
// tests about a first start on an empty DATA_DIR need (embedded boot in test/readme.test.ts). Other
// tests of a process on the embedded database start it on a copy of the blank data directory
// test/support/db.ts keeps: what initdb would have written, unpacked from that tar here (no PGlite
// in this process), so the process opens it in a fraction of the time.

/** Unpacks a PGlite data directory tar (PGlite's dumpDataDir: ustar, directories and files) into `dir`. */
export async function unpackDataDir (tar: Blob | Buffer, dir: string): Promise<void> {
  const buf = Buffer.isBuffer(tar) ? tar : Buffer.from(await tar.arrayBuffer())
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  for (let off = 0; off + 512 <= buf.length;) {
    const header = buf.subarray(off, off + 512)
    if (header.every((b) => b === 0)) break
    const text = (from: number, to: number): string => { const s = header.subarray(from, to).toString('utf8'); const nul = s.indexOf('\0'); return nul === -1 ? s : s.slice(0, nul) }
    const octal = (from: number, to: number): number => parseInt(text(from, to).trim() || '0', 8)
    const size = octal(124, 136)
    const mode = octal(100, 108) & 0o777
    const type = header[156] === 0 ? '0' : String.fromCharCode(header[156])
    const prefix = text(257, 263) === 'ustar' ? text(345, 500) : ''
    const name = normalize((prefix === '' ? '' : `${prefix}/`) + text(0, 100)).replace(/^\/+/, '')
    if (name.split('/').includes('..') || isAbsolute(name)) throw new Error(`data directory tar: a path outside it: ${name}`)
    const path = join(dir, name)
    const body = off + 512
    if (type === '5') mkdirSync(path, { recursive: true, mode: mode || 0o700 })
    else if (type === '0') writeFileSync(path, buf.subarray(body, body + size), { mode: mode || 0o600 })
    else throw new Error(`data directory tar: entry type ${JSON.stringify(type)} of ${name} is not a file or a directory`)
    off = body + Math.ceil(size / 512) * 512
  }
}

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..')

/**
 * The blank data directory's tar: read straight from where blankDataDir (test/support/db.ts) keeps
 * it, as a Buffer (its Blob costs some 0.4 s of copying 40 MB twice); blankDataDir itself, which
 * makes it, when it is not there.
 */
async function blankTar (): Promise<Blob | Buffer> {
  const { version } = JSON.parse(readFileSync(join(ROOT, 'node_modules', '@electric-sql', 'pglite', 'package.json'), 'utf8')) as { version: string }
  try {
    return readFileSync(join(ROOT, '.tap', 'pglite', `blank-${version}.tar`))
  } catch {
    return blankDataDir()
  }
}

/** DATA_DIR/pglite as PGlite's initdb leaves it (blank: the sidecar that opens it still migrates it). */
export async function blankEmbeddedDataDir (dataDir: string): Promise<void> {
  await unpackDataDir(await blankTar(), join(dataDir, 'pglite'))
}
