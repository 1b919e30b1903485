// The `t` a test file imports when test/run.mjs runs several files in one process
// (test/support/batch.mjs): the subtest of the file being loaded, so the file's top-level tests,
// `t.before` and `t.teardown` are its own, and they end with it, as they would end with its
// process. Files load one after another; `file()` names the subtest the next one gets.
import tap from 'tap'

let current = tap

export function file (t) { current = t }

export default new Proxy({}, {
  get (_, key) {
    const value = Reflect.get(current, key, current)
    return typeof value === 'function' ? value.bind(current) : value
  },
  set (_, key, value) { return Reflect.set(current, key, value, current) },
  has (_, key) { return Reflect.has(current, key) },
})
