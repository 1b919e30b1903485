import t from 'tap'
import { readFileSync } from 'node:fs'
import { envSchema } from '../src/config/config.js'

// README's configuration table is the operator's reference: it must name exactly the variables
// the schema knows, with the same defaults.

const readme = readFileSync('README.md', 'utf8')
const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 5))
const rows = [...section.matchAll(/^\| `([A-Z_]+)` \| ([^|]+) \|/gm)].map((m) => ({ name: m[1], def: m[2].trim() }))

t.test('the table lists every variable of the schema, and only those', async (t) => {
  t.same(rows.map((r) => r.name).sort(), Object.keys(envSchema.shape).sort())
})

t.test('documented defaults are the schema defaults', async (t) => {
  for (const { name, def } of rows) {
    const field = (envSchema.shape as Record<string, { safeParse: (v: unknown) => { success: boolean, data?: unknown } }>)[name]
    const parsed = field.safeParse(undefined)
    if (def === 'required') { t.notOk(parsed.success, `${name} is required`); continue }
    if (!def.startsWith('`')) continue // prose such as "embedded" or "unset"
    t.ok(parsed.success, `${name} has a default`)
    t.equal(String(parsed.data).toLowerCase(), def.replace(/`/g, '').toLowerCase(), `${name} default`)
  }
})

t.test('the README shows the two commands and the test command', async (t) => {
  t.match(readme, /npm ci\nnpm start/)
  t.match(readme, /npm test/)
})
