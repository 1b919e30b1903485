// Drops one test database (test/support/db.ts starts it detached, so a test file need not wait for
// DROP DATABASE's checkpoint): DROP_ADMIN_URL names the server, DROP_DATABASE the database.
import postgres from 'postgres'

const name = process.env.DROP_DATABASE ?? ''
if (!/^usage_proxy_test_[0-9a-f]+$/.test(name)) process.exit(2)
const admin = postgres(process.env.DROP_ADMIN_URL, { max: 1, onnotice: () => {} })
try {
  await admin.unsafe(`drop database if exists ${name} with (force)`)
} finally {
  await admin.end({ timeout: 1 })
}
