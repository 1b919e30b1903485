import type { Sql } from '../db/connect.js'
import type { Logger } from '../lib/log.js'
import { readAllowlists } from './allowlist-store.js'

// Which models a request may use: every list that applies must allow each model it names (its
// user's groups that have a list, and its API key's models when the key has a list). Checked
// before the budget reservation and before anything goes upstream.
//
// The lists are cached per process and re-read every BUDGET_REFRESH_MS, and at once when this
// process's admin API writes one: another replica applies a change within that interval.
//
// How ids compare: case-insensitively, whole ids. An entry without a variant suffix allows the
// model's variants too (`openai/gpt-4o` allows `openai/gpt-4o:nitro`); an entry with one allows
// that variant only (`meta-llama/llama-3.3-70b-instruct:free` does not allow the paid model).

/** One list, ready to ask: ids lowercased. */
type Compiled = ReadonlySet<string>

function compile (models: readonly string[]): Compiled {
  return new Set(models.map((m) => m.toLowerCase()))
}

function allows (list: Compiled, model: string): boolean {
  const m = model.toLowerCase()
  if (list.has(m)) return true
  const colon = m.indexOf(':')
  return colon > 0 && list.has(m.slice(0, colon))
}

/** What restricts one caller: [] when nothing does. */
export interface Restriction { who: string, list: Compiled, models: readonly string[] }

export class Allowlists {
  private groups = new Map<string, { list: Compiled, models: string[] }>()
  private loaded: Promise<void>
  private readonly timer: NodeJS.Timeout
  private periodic: Promise<void> | null = null

  constructor (private readonly sql: Sql, private readonly org: string, refreshMs: number, private readonly log: Logger) {
    this.loaded = this.load()
    this.loaded.catch(() => {})
    // One periodic re-read at a time: a database slower than the interval never piles them up.
    this.timer = setInterval(() => { this.periodic ??= this.refresh().finally(() => { this.periodic = null }) }, refreshMs)
    this.timer.unref()
  }

  close (): void { clearInterval(this.timer) }

  /** Re-reads the lists; a failure keeps the last ones read (or, before the first, leaves them unknown). */
  async refresh (): Promise<void> {
    const next = this.load()
    next.then(() => { this.loaded = next }, () => {})
    await next.catch((err: unknown) => { this.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'allowlists: could not re-read the model allowlists; keeping the last ones read') })
  }

  private async load (): Promise<void> {
    const rows = await readAllowlists(this.sql, this.org)
    const groups = new Map<string, { list: Compiled, models: string[] }>()
    for (const r of rows) groups.set(r.group_id, { list: compile(r.models), models: r.models })
    this.groups = groups
  }

  /**
   * The lists that apply to a caller. Rejects when the lists were never read (the database did not
   * answer since this process started): a caller is never let through unchecked.
   */
  async restrictions (groups: readonly string[], keyModels: readonly string[] | null): Promise<Restriction[]> {
    await this.loaded
    const out: Restriction[] = []
    for (const g of groups) {
      const l = this.groups.get(g)
      if (l) out.push({ who: `group '${g}'`, list: l.list, models: l.models })
    }
    if (keyModels !== null) out.push({ who: 'this API key', list: compile(keyModels), models: keyModels })
    return out
  }
}

/** Whether every restriction allows the model. */
export function allowedBy (rs: readonly Restriction[], model: string): boolean {
  return rs.every((r) => allows(r.list, model))
}

const SHOWN = 10

/**
 * Why the request may not go, for the person who sent it; null when it may. `models`: every
 * model the request names (`model` and a `models` fallback list); null when its `models` field is
 * not a list of ids.
 */
export function refusalFor (rs: readonly Restriction[], models: readonly string[] | null): string | null {
  if (rs.length === 0) return null
  const scope = rs[0]
  const shown = (r: Restriction): string => {
    const ids = r.models.slice(0, SHOWN).join(', ')
    return r.models.length === 0 ? 'none' : r.models.length > SHOWN ? `${ids} and ${r.models.length - SHOWN} more` : ids
  }
  if (models === null) return `"models" must be a list of model ids: the models ${scope.who} may use are limited (allowed: ${shown(scope)}).`
  if (models.length === 0) return `Name a model: the models ${scope.who} may use are limited (allowed: ${shown(scope)}).`
  for (const m of models) {
    const r = rs.find((x) => !allows(x.list, m))
    if (r) return `The model '${m.length > 120 ? m.slice(0, 119) + '…' : m}' is not allowed for ${r.who}. Allowed: ${shown(r)}.`
  }
  return null
}
