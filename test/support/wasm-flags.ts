// Node flags for a child process that runs the embedded database (PGlite, Postgres compiled to
// WebAssembly). V8 compiles a WebAssembly module with its baseline compiler (Liftoff) and then
// recompiles the functions that run hot with its optimizing one (TurboFan); in a process that
// lives a few seconds, PGlite's module is mostly compiled and barely run, and the recompiling
// is the larger part: with Liftoff only, opening a data directory costs about 1.3 s of CPU
// instead of 2.1, and a sidecar's first start (initdb and the migrations) about 7 s instead of 9.
// The code's behaviour is the same under either compiler; only its speed differs.
export const WASM_BASELINE_ONLY = ['--liftoff-only']
