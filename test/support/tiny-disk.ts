import { execFileSync } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// A disk that really fills up: a 64 KiB tmpfs (mounting needs root, which the test machines have).
// write(2) on it fails with ENOSPC, and a write larger than the space left is cut short, as on a
// real full disk: no function is replaced, the journal meets the kernel's answers.

export interface TinyDisk { dir: string, fill: () => void, free: () => void, close: () => void }

export function mountTinyDisk (): TinyDisk | null {
  const dir = mkdtempSync(join(tmpdir(), 'tiny-disk-'))
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir], { stdio: 'ignore' })
  } catch {
    rmSync(dir, { recursive: true, force: true })
    return null
  }
  const filler = join(dir, 'filler')
  return {
    dir,
    /** Takes every whole page left; the last page of a file already there keeps its slack. */
    fill () {
      const fd = openSync(filler, 'a')
      const page = Buffer.alloc(4096, 0x2e)
      try { for (;;) writeSync(fd, page) } catch { /* ENOSPC: full */ } finally { closeSync(fd) }
    },
    free () { rmSync(filler, { force: true }) },
    close () {
      try { execFileSync('umount', ['-l', dir], { stdio: 'ignore' }) } catch { /* already gone */ }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
