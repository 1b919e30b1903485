import { existsSync, readFileSync } from 'node:fs'
import { parseEnv } from 'node:util'

// `npx usage-proxy gen-env "Acme GmbH" > .env` then `npm start`: a .env file in the working
// directory is read when present. The real environment wins over the file, as with compose.

/** This process's environment with ./.env under it: the one place outside the schema that reads process.env. */
export function processEnvironment (): Record<string, string | undefined> {
  return withEnvFile(process.env)
}

export function withEnvFile (env: NodeJS.ProcessEnv, path = '.env'): Record<string, string | undefined> {
  if (!existsSync(path)) return { ...env }
  return { ...parseEnv(readFileSync(path, 'utf8')), ...env }
}
