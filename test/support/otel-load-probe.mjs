// `node --import` this file to learn whether a process loads the OpenTelemetry SDK: every
// @opentelemetry/* module that is imported is named, one a line, in the file that
// OTEL_LOAD_PROBE_FILE names. The resolve hook runs on the loader's thread and writes there.
import { register } from 'node:module'

const hooks = `
import { appendFileSync } from 'node:fs'
let file = null
export function initialize (data) { file = data.file }
export async function resolve (specifier, context, next) {
  if (file && specifier.startsWith('@opentelemetry/')) appendFileSync(file, specifier + '\\n')
  return next(specifier, context)
}
`
register('data:text/javascript,' + encodeURIComponent(hooks), { data: { file: process.env.OTEL_LOAD_PROBE_FILE ?? null } })
