// Postgres text cannot hold U+0000, and user ids, names, model names and chat ids come from
// clients: one such character would make Postgres refuse a whole batch.
const NUL = /\u0000/g

export function pgText<T extends string | null> (v: T): T {
  return (typeof v === 'string' && v.includes('\u0000') ? v.replace(NUL, '') : v) as T
}
