import t from 'tap'
import { readFileSync, readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join, posix } from 'node:path'

// The layers of docs/architecture.md, checked on the import graph of src/: a room is a folder
// (src/usage/ledger, src/proxy/body, ...; src/ itself is "(root)"), an edge is a relative import
// from a file of one room into another. Type-only imports count: they bind the layers as much.

const SRC = join(dirname(fileURLToPath(import.meta.url)), '..', 'src')
const COMPOSITION = ['boot.ts', 'cli.ts', 'main.ts']

const files = (readdirSync(SRC, { recursive: true }) as string[]).map((f) => f.split(/[\\/]/).join('/')).filter((f) => f.endsWith('.ts')).sort()
const room = (file: string): string => posix.dirname(file) === '.' ? '(root)' : posix.dirname(file)

interface Edge { from: string, to: string, fromRoom: string, toRoom: string }
const edges: Edge[] = []
for (const from of files) {
  const text = readFileSync(join(SRC, from), 'utf8')
  // `from '...'`, `import '...'`, `import('...')`, `export ... from '...'`: relative ones are ours.
  for (const m of text.matchAll(/(?:\bfrom|\bimport)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
    const to = posix.normalize(posix.join(posix.dirname(from), m[1])).replace(/\.js$/, '.ts')
    edges.push({ from, to, fromRoom: room(from), toRoom: room(to) })
  }
}
const between = edges.filter((e) => e.fromRoom !== e.toRoom)
const show = (es: Edge[]): string[] => es.map((e) => `${e.from} -> ${e.to}`)

t.test('the graph is read (a regex that matched nothing would pass every rule)', async (t) => {
  t.ok(files.length > 50, `${files.length} files`)
  t.ok(between.length > 50, `${between.length} imports between rooms`)
  t.ok(edges.some((e) => e.from === 'main.ts' && e.toRoom === 'proxy'), 'main.ts imports the proxy')
})

t.test('src/ root holds only the composition: main.ts, boot.ts, cli.ts', async (t) => {
  const root = readdirSync(SRC, { withFileTypes: true }).filter((d) => d.isFile()).map((d) => d.name).sort()
  t.same(root, COMPOSITION)
})

t.test('nothing below the composition imports it (cli.ts runs main.ts, main.ts boot.ts)', async (t) => {
  t.same(show(between.filter((e) => COMPOSITION.includes(e.to))), [])
})

t.test('lib/ and config/ import nothing of ours outside themselves', async (t) => {
  t.same(show(between.filter((e) => e.fromRoom === 'lib' || e.fromRoom === 'config')), [])
})

t.test('identity imports nothing from usage or budgets', async (t) => {
  t.same(show(between.filter((e) => e.fromRoom.startsWith('identity') && /^(usage|budgets)(\/|$)/.test(e.toRoom))), [])
})

t.test('no cycle between rooms', async (t) => {
  const adj = new Map<string, Set<string>>()
  for (const e of between) {
    if (!adj.has(e.fromRoom)) adj.set(e.fromRoom, new Set())
    adj.get(e.fromRoom)!.add(e.toRoom)
  }
  // For each edge a -> b: can b reach a again? Then the edge is on a cycle; name its imports.
  const reaches = (from: string, target: string): boolean => {
    const seen = new Set<string>()
    const stack = [from]
    while (stack.length > 0) {
      const x = stack.pop()!
      if (x === target) return true
      if (seen.has(x)) continue
      seen.add(x)
      for (const y of adj.get(x) ?? []) stack.push(y)
    }
    return false
  }
  t.same(show(between.filter((e) => reaches(e.toRoom, e.fromRoom))), [])
})
