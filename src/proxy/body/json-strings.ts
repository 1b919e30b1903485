import { WASM } from './json-strings-wasm.js'

// Long JSON strings for the scanner (json-scan.ts), read by the SIMD loop of json-strings.wat:
// about four times the JavaScript word loop's speed on a base64 image, twice on chat text with
// an escape every few dozen bytes (`node bench/json-strings.js`).
//
// The loop reads its own memory, so the bytes are copied there first, a window at a time. The
// window belongs to one synchronous scan step: the scanner calls `forgetWindow()` whenever it
// starts one, since between steps the buffer may be another request's or written in place.

/** Bytes copied per window: one WebAssembly page. */
const WINDOW = 64 * 1024

interface Skipper { skip: (p: number, end: number) => number, escaped: WebAssembly.Global, memory: WebAssembly.Memory }

/** null where WebAssembly or its SIMD is not there (node --jitless): the scanner reads in JavaScript. */
const wasm: Skipper | null = load()

function load (): Skipper | null {
  try {
    const instance = new WebAssembly.Instance(new WebAssembly.Module(Buffer.from(WASM, 'base64')))
    return instance.exports as unknown as Skipper
  } catch {
    return null
  }
}

let windowBytes = WINDOW
let memory: Uint8Array | null = wasm && new Uint8Array(wasm.memory.buffer)
/** The window: memory holds buf[from, to). */
let windowOf: Uint8Array | null = null
let from = 0
let to = 0

/** Whether long strings are read by the SIMD loop. */
export function simdStrings (): boolean { return memory !== null }

/** Set by skipRest: whether the string held a backslash escape. */
export let restEscaped = false

/** Drops the window: the bytes it was copied from may change before the next read. */
export function forgetWindow (): void { windowOf = null }

/**
 * From `j` inside a string of `buf` (the opening quote already passed) to just past its closing
 * quote, or -1 when JSON refuses it; `end` bounds the input. Only when simdStrings().
 */
export function skipRest (buf: Uint8Array, j: number, end: number): number {
  const skipper = wasm!
  skipper.escaped.value = 0
  for (;;) {
    if (windowOf !== buf || j < from || j >= to) {
      const n = Math.min(windowBytes, end - j)
      if (n <= 0) return -1
      memory!.set(buf.subarray(j, j + n))
      windowOf = buf
      from = j
      to = j + n
    }
    const r = skipper.skip(j - from, to - from)
    if (r >= 0) { restEscaped = skipper.escaped.value === 1; return from + r + 1 }
    if (r === -1 || to >= end) return -1
    // Ran out inside the window: go on from where it stopped, in the next one.
    j = from + (-2 - r)
    windowOf = null
  }
}

/** @internal for tests: a smaller window, or no SIMD loop at all (the JavaScript path). */
export function tuneStrings (options: { window?: number, simd?: boolean }): void {
  windowBytes = Math.max(16, Math.min(WINDOW, options.window ?? WINDOW))
  memory = options.simd === false || !wasm ? null : new Uint8Array(wasm.memory.buffer)
  windowOf = null
}
