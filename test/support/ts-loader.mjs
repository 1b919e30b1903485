// Loads the suite's TypeScript without ts-node: each .ts file is transpiled once (TypeScript's
// transpileModule, types stripped, no type check: `npm test` runs tsc for that) and the output
// kept under .tap/ts-cache, keyed by the file's path and content. A test process then loads
// JavaScript it has seen before instead of starting the compiler and transpiling the sidecar's
// ~100 modules again, which cost each of the suite's processes seconds of CPU.
// tap preloads it (package.json "tap": node-arg). tap's own TypeScript plugin (ts-node) is left
// out of its plugin list, with the others no test uses (mock, snapshot, fixture, ...): each is a
// loader or module every test process would start for nothing.
import { register } from 'node:module'

register('./ts-hooks.mjs', import.meta.url)
