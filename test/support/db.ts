import postgres from 'postgres'
import { randomBytes } from 'node:crypto'

// Each test file gets a database of its own on the real server, created here and dropped at the
// end: files run in parallel and never see each other's rows.

export const ADMIN_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

export interface TestDb { url: string, name: string, sql: postgres.Sql<{}>, drop: () => Promise<void> }

export async function createTestDb (): Promise<TestDb> {
  const name = `usage_proxy_test_${randomBytes(6).toString('hex')}`
  const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {} })
  await admin.unsafe(`create database ${name}`)
  const url = withDatabase(ADMIN_URL, name)
  const sql = postgres(url, { max: 2, onnotice: () => {} })
  return {
    url, name, sql,
    async drop () {
      await sql.end({ timeout: 1 })
      await admin.unsafe(`drop database if exists ${name} with (force)`)
      await admin.end({ timeout: 1 })
    },
  }
}

function withDatabase (url: string, db: string): string {
  const u = new URL(url)
  u.pathname = `/${db}`
  return u.toString()
}
