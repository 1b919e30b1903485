// A fresh Postgres database per bench run (dropped and created again), and row counting.
// Uses the root project's `postgres` client: bench/ lives inside the project.
import postgres from 'postgres'

export const PG_ADMIN_URL = process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

export function dbUrl (name) {
  const u = new URL(PG_ADMIN_URL)
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname)) throw new Error(`bench databases live on loopback only, not ${u.hostname}`)
  u.pathname = '/' + name
  return u.toString()
}

/** Drops (forcibly) and creates database `name`; returns its URL. */
export async function freshDatabase (name) {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`unsafe database name ${name}`)
  const admin = postgres(dbUrl('postgres'), { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`drop database if exists ${name} with (force)`)
    await admin.unsafe(`create database ${name}`)
  } finally {
    await admin.end({ timeout: 2 })
  }
  return dbUrl(name)
}

export function openDb (url) {
  return postgres(url, { max: 1, onnotice: () => {} })
}

/** Rows in usage_events; 0 while the table does not exist yet. */
export async function countUsageRows (sql) {
  const [row] = await sql`select count(*)::int as n from usage_events`
  return row.n
}
