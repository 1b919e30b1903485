// Loads the suite's TypeScript without ts-node: each .ts file is transpiled once and kept under
// .tap/ts-cache (ts-cache.mjs). A test process then loads JavaScript it has seen before instead of
// starting the compiler and transpiling the sidecar's ~100 modules again, which cost each of the
// suite's processes seconds of CPU.
// test/run.mjs and tap preload it (package.json "tap": node-arg). tap's own TypeScript plugin (ts-node) is left
// out of its plugin list, with the others no test uses (mock, snapshot, fixture, ...): each is a
// loader or module every test process would start for nothing.
import { register } from 'node:module'

register('./ts-hooks.mjs', import.meta.url)
