// The SQL statements the documentation prints: every ```sql block of README.md and of the
// Markdown files under docs/, split at each `;` that ends a line. test/readme-billing.test.ts
// checks what they return and bench/scale.js times them, both from this one list, so a query
// added to the documentation is checked to run and timed without anyone listing it again.
import { readFileSync, readdirSync } from 'node:fs'
import { join, relative } from 'node:path'

/** Markdown files holding documented SQL: README.md, then docs/**.md in name order. */
export function documentationFiles (root) {
  const files = [join(root, 'README.md')]
  const walk = (dir) => {
    let entries
    try { entries = readdirSync(dir, { withFileTypes: true }) } catch (err) { if (err.code === 'ENOENT') return; throw err }
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (e.isDirectory()) walk(join(dir, e.name))
      else if (e.name.endsWith('.md')) files.push(join(dir, e.name))
    }
  }
  walk(join(root, 'docs'))
  return files
}

/** The statements of one Markdown text's ```sql blocks, trimmed, in order. */
export function sqlStatements (markdown) {
  return [...markdown.matchAll(/```sql\n([\s\S]*?)```/g)]
    .flatMap((m) => m[1].split(/;\s*\n/))
    .map((s) => s.trim().replace(/;$/, ''))
    .filter((s) => s !== '' && !/^(--[^\n]*(\n|$))+$/.test(s))
}

/**
 * Every documented statement: { file (relative to root), title (its first line without `-- `), sql }.
 * A statement whose first line is not a comment is titled by that line.
 */
export function documentedStatements (root) {
  return documentationFiles(root).flatMap((file) => sqlStatements(readFileSync(file, 'utf8')).map((sql) => ({
    file: relative(root, file),
    title: sql.split('\n')[0].replace(/^--\s*/, ''),
    sql,
  })))
}

/**
 * The documentation's example organization ids ('mai_client_…', what the sidecar derives from a
 * key) replaced by `organization`, so an example reads rows that exist.
 */
export function forOrganization (sql, organization) {
  if (!/^[a-z0-9_]+$/.test(organization)) throw new Error(`unsafe organization id ${organization}`)
  return sql.replace(/'mai_client_[a-z0-9_]+'/g, `'${organization}'`)
}
