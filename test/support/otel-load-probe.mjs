// `node --import` this file to learn whether a process loads the OpenTelemetry SDK: every
// @opentelemetry/* module that is imported is named, one a line, in the file that
// OTEL_LOAD_PROBE_FILE names. Where Node has in-thread hooks (module.registerHooks, Node 22.15
// and later) they are used: the off-thread hooks of module.register make every import of the
// process wait on another thread, which a probe has no reason to risk. Node 20 has only those.
import { appendFileSync } from 'node:fs'
import * as mod from 'node:module'

const file = process.env.OTEL_LOAD_PROBE_FILE ?? null

if (typeof mod.registerHooks === 'function') {
  mod.registerHooks({
    resolve (specifier, context, next) {
      if (file && specifier.startsWith('@opentelemetry/')) appendFileSync(file, specifier + '\n')
      return next(specifier, context)
    },
  })
} else {
  const hooks = `
import { appendFileSync } from 'node:fs'
let file = null
export function initialize (data) { file = data.file }
export async function resolve (specifier, context, next) {
  if (file && specifier.startsWith('@opentelemetry/')) appendFileSync(file, specifier + '\\n')
  return next(specifier, context)
}
`
  mod.register('data:text/javascript,' + encodeURIComponent(hooks), { data: { file } })
}
