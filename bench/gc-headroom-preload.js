// Preloaded into the bare Node proxy (`--import`) when a harness compares it with usage-proxy at
// the same GC regime: the sidecar's own GC headroom (dist/lib/gc-headroom.js), nothing else.
import { join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

// As bench/targets.js finds the project (not imported: it would bring the harness's signal handlers).
const ROOT = process.env.BENCH_PROJECT_DIR ? resolve(process.env.BENCH_PROJECT_DIR) : join(fileURLToPath(new URL('.', import.meta.url)), '..')

const { keepGcHeadroom } = await import(pathToFileURL(join(ROOT, 'dist', 'lib', 'gc-headroom.js')).href)
keepGcHeadroom()
