import t from 'tap'
import { redactUrl } from '../src/db/connect.js'

// The database URL is logged (retries, "schema ready", start-up errors): no form of its secret may be.

t.test('a password in the user info is hidden, whatever characters it holds', async (t) => {
  t.equal(redactUrl('postgres://app:s3cret@db:5432/ledger'), 'postgres://app:***@db:5432/ledger')
  for (const pw of ['p@ss', 'pa/ss', 'pa?ss', 'pa#ss', 'a:b']) {
    const shown = redactUrl(`postgres://app:${pw}@db:5432/ledger`)
    t.notMatch(shown, pw.slice(pw.length - 2), `${pw}: ${shown}`)
    t.match(shown, /^postgres:\/\/app:\*\*\*/)
  }
})

t.test('a password given as a parameter is hidden', async (t) => {
  const shown = redactUrl('postgres://app@db/ledger?sslmode=require&password=s3cret&sslpassword=k3y&application_name=x')
  t.notMatch(shown, 's3cret')
  t.notMatch(shown, 'k3y')
  t.match(shown, 'sslmode=require')
  t.match(shown, 'application_name=x')
  t.equal(redactUrl('postgresql://db/ledger?PASSWORD=s3cret'), 'postgresql://db/ledger?PASSWORD=***')
})

t.test('a URL without a secret is shown as it is', async (t) => {
  t.equal(redactUrl('postgres://app@db:5432/ledger'), 'postgres://app@db:5432/ledger')
  t.equal(redactUrl('postgres://db:5432/ledger?sslmode=disable'), 'postgres://db:5432/ledger?sslmode=disable')
})
