// Postgres text cannot hold U+0000, and a lone UTF-16 surrogate is not valid in the JSON the
// ledger sends; user ids, names, model names and chat ids come from clients, and one such
// character would make Postgres refuse the row.
const NUL = /\u0000/g
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g
const SUSPECT = /[\u0000\uD800-\uDFFF]/

export function pgText<T extends string | null> (v: T): T {
  if (typeof v !== 'string' || !SUSPECT.test(v)) return v
  return v.replace(NUL, '').replace(LONE_SURROGATE, '\uFFFD') as T
}
