import { existsSync, readFileSync } from 'node:fs'
import { parseEnv } from 'node:util'

// `npx usage-proxy gen-env "Acme GmbH" > .env` then `npm start`: a .env file in the working
// directory is read when present. The real environment wins over the file, as with compose.

/** The names each merged environment took from its .env file, for the start-up warnings. */
const fileNames = new WeakMap<object, ReadonlySet<string>>()

/** This process's environment with ./.env under it: the one place outside the schema that reads process.env. */
export function processEnvironment (): Record<string, string | undefined> {
  return withEnvFile(process.env)
}

export function withEnvFile (env: NodeJS.ProcessEnv, path = '.env'): Record<string, string | undefined> {
  if (!existsSync(path)) return { ...env }
  const file = parseEnv(readFileSync(path, 'utf8'))
  const merged = { ...file, ...env }
  fileNames.set(merged, new Set(Object.keys(file)))
  return merged
}

/** The names `env` took from a .env file (empty when it was not made by withEnvFile, or had none). */
export function envFileNames (env: object): ReadonlySet<string> {
  return fileNames.get(env) ?? new Set()
}
