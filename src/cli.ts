#!/usr/bin/env node
import { createHash, randomBytes } from 'node:crypto'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

// The `usage-proxy` command: `start` (the default) runs the sidecar, `gen-env` writes the .env
// of a new client organization; the other commands load their modules on demand. No framework.

const USAGE = `usage: usage-proxy [command]

commands:
  start                          run the sidecar (the default); configured by environment
                                 variables, see README.md
  gen-env "<Organization Name>" [--prefix mai_client]
                                 print a .env for a new client organization to stdout:
                                 its stable OPENROUTER_EXTERNAL_USER id, fresh PROXY_API_KEY,
                                 ADMIN_API_KEY, WEBUI_SECRET_KEY and POSTGRES_PASSWORD, and a placeholder
                                 OPENROUTER_API_KEY; values unquoted (docker run --env-file)
  verify [--month YYYY-MM]       recompute the daily rollups from the raw rows and list any
                                 difference; exits 1 when one differs (needs DATABASE_URL, or
                                 the stopped sidecar's DATA_DIR)
  forget --user ID                erase a user: their id becomes a stable pseudonym in every row,
                                 rollup, mapping, budget and audit line; name, email, chat and
                                 message ids are erased, amounts kept (README "Privacy")
  statement --month YYYY-MM [--format csv|json|md] [--out FILE] [--all-organizations]
                                 the month's statement per user (requests, tokens, cost,
                                 markup, billed) with exact totals; reads DATABASE_URL
  export-db --to postgres://…    copy the embedded database under DATA_DIR (sidecar stopped)
                                 into an empty PostgreSQL database, schema first; then start
                                 with DATABASE_URL and the same DATA_DIR
  export status [--json]         where each billing export sink stands: rows sent, set aside
                                 (with reasons), waiting, the lease holder, the last error
  export replay --sink NAME --from DATE [--dry-run]
                                 resend on purpose the rows from DATE on that the sink already
                                 handled; warns where the receiver will count them twice
  help, --help, -h               print this help

example:
  usage-proxy gen-env "Acme GmbH" > .env && chmod 600 .env
`

const DEFAULT_PREFIX = 'mai_client'
// The id must match the config schema (1-100 of A-Z a-z 0-9 _ . -): prefix + "_" + 8 hex digits.
const PREFIX = /^[A-Za-z0-9_.-]{1,91}$/

class UsageError extends Error {}

/** Case, Unicode form and spacing do not change who the organization is. */
function normalizeName (name: string): string {
  return name.normalize('NFKC').replace(/\s+/gu, ' ').trim().toLowerCase()
}

/** `<prefix>_<first 8 hex digits of sha256(normalized name)>`: the same name always gives the same id. */
function organizationId (name: string, prefix = DEFAULT_PREFIX): string {
  return `${prefix}_${createHash('sha256').update(normalizeName(name), 'utf8').digest('hex').slice(0, 8)}`
}

/**
 * Values are written unquoted: `docker run --env-file` keeps quotes as part of the value, while
 * Docker Compose and Node's --env-file / dotenv read an unquoted value as it stands. A name that
 * an unquoted value cannot carry for all three (a `#` starts a comment for Node and Compose, `$`
 * is interpolated by Compose, a leading quote is stripped, `\` is read differently) is refused.
 */
function unquoted (value: string): string {
  if (/[#$\\]/.test(value) || /^["'`]/.test(value)) {
    throw new UsageError('the organization name holds # $ \\ or begins with a quote, which an unquoted .env value cannot carry for docker, compose and node alike: ' +
      'run gen-env with a plainer name, then write ORGANIZATION_NAME by hand')
  }
  return value
}

function secret (): string {
  return randomBytes(24).toString('base64url')
}

function genEnv (args: string[]): string {
  let prefix = DEFAULT_PREFIX
  const names: string[] = []
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]
    if (arg === '--') { names.push(...args.slice(i + 1)); break }
    if (arg === '--prefix') {
      if (i + 1 >= args.length) throw new UsageError('--prefix needs a value')
      prefix = args[++i]
    } else if (arg.startsWith('--prefix=')) prefix = arg.slice('--prefix='.length)
    else if (arg.startsWith('-')) throw new UsageError(`gen-env: unknown option ${arg}`)
    else names.push(arg)
  }
  if (names.length !== 1) throw new UsageError('gen-env takes exactly one organization name (quote it: gen-env "Acme GmbH")')
  if (!PREFIX.test(prefix)) throw new UsageError('--prefix must be 1-91 characters of A-Z a-z 0-9 _ . -')
  const name = names[0].normalize('NFC').replace(/\s+/gu, ' ').trim()
  if (name === '') throw new UsageError('the organization name is empty')
  if (/\p{Cc}/u.test(name)) throw new UsageError('the organization name holds control characters')

  return [
    `# usage-proxy: environment of one client organization, made by \`usage-proxy gen-env\` on ${new Date().toISOString().slice(0, 10)}.`,
    '# Holds secrets: keep it out of version control (chmod 600). compose.example.yml reads it as .env;',
    '# `docker run --env-file .env` reads it too (values are unquoted for that reason).',
    '',
    '# The client organization. The id is derived from the name (sha256 of the name, lowercased and',
    '# with spaces normalized): running gen-env again with the same name gives the same id. Keep it',
    '# once usage is recorded: the organization\'s rows and the user ids sent to OpenRouter derive from it.',
    `ORGANIZATION_NAME=${unquoted(name)}`,
    `OPENROUTER_EXTERNAL_USER=${organizationId(name, prefix)}`,
    '',
    '# The organization\'s own OpenRouter key (https://openrouter.ai/settings/keys). Replace the placeholder.',
    'OPENROUTER_API_KEY=sk-or-v1-REPLACE_ME',
    '',
    '# The key Open WebUI presents to usage-proxy (compose passes it to Open WebUI as OPENAI_API_KEY).',
    '# Without one, usage-proxy listens on 127.0.0.1 only.',
    `PROXY_API_KEY=up-${secret()}`,
    '',
    '# Signs in to the usage page (http://localhost:8787/admin/) and the /admin/v1 API.',
    `ADMIN_API_KEY=${secret()}`,
    '',
    '# Signs Open WebUI\'s sessions: a fixed value keeps users logged in when the container is recreated.',
    `WEBUI_SECRET_KEY=${secret()}`,
    '',
    '# Signed identity (Open WebUI versions that send X-OpenWebUI-User-Jwt): uncomment here and the',
    '# two FORWARD_USER_INFO_HEADER_JWT_SECRET lines in compose.yml; forged identity headers then stop working.',
    `# FORWARD_USER_INFO_HEADER_JWT_SECRET=${secret()}`,
    '',
    '# Password of the bundled Postgres; compose builds usage-proxy\'s DATABASE_URL from it.',
    `POSTGRES_PASSWORD=${secret()}`,
    '',
    '# Percentage added to OpenRouter\'s cost in the billing views, e.g. 15 or 12.5.',
    'MARKUP_PERCENT=0',
    '',
  ].join('\n')
}

async function run (argv: string[]): Promise<void> {
  const [command, ...args] = argv
  if (command === 'help' || command === '--help' || command === '-h' || args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE)
  } else if (command === undefined || command === 'start') {
    if (args.length > 0) throw new UsageError(`start takes no arguments (got ${args.join(' ')}): configure it with environment variables`)
    const { main } = await import('./main.js')
    await main()
  } else if (command === 'verify') {
    const [{ runVerify }, { processEnvironment }] = await Promise.all([import('./usage/reports/verify-command.js'), import('./config/env-file.js')])
    process.exitCode = await runVerify(args, processEnvironment())
  } else if (command === 'forget') {
    const [{ runForget }, { processEnvironment }] = await Promise.all([import('./audit/forget-command.js'), import('./config/env-file.js')])
    process.exitCode = await runForget(args, processEnvironment())
  } else if (command === 'export-db') {
    const [{ runExportDb }, { processEnvironment }] = await Promise.all([import('./db/export-command.js'), import('./config/env-file.js')])
    process.exitCode = await runExportDb(args, processEnvironment(), join(dirname(fileURLToPath(import.meta.url)), '..', 'sql'))
  } else if (command === 'export') {
    const [{ runExport }, { processEnvironment }] = await Promise.all([import('./export/command.js'), import('./config/env-file.js')])
    process.exitCode = await runExport(args, processEnvironment())
  } else if (command === 'gen-env') {
    process.stdout.write(genEnv(args))
  } else if (command === 'statement') {
    const { statement, StatementError } = await import('./usage/reports/statement.js')
    const { processEnvironment } = await import('./config/env-file.js')
    const { ConfigError } = await import('./config/config.js')
    await statement(args, processEnvironment()).catch((e: unknown) => {
      throw e instanceof StatementError || e instanceof ConfigError ? new UsageError(e.message) : e
    })
  } else {
    throw new UsageError(`unknown command ${JSON.stringify(command)}`)
  }
}

// Usage errors exit 2 with a one-line message; start-up failures (the port taken, say) print one
// line naming the variable and exit 1 (main.ts); anything else is a bug: node prints the stack.
run(process.argv.slice(2)).catch((err: unknown) => {
  if (!(err instanceof UsageError)) throw err
  process.stderr.write(`usage-proxy: ${err.message}\nrun "usage-proxy --help" for usage\n`)
  process.exitCode = 2
})
