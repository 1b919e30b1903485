import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { withEnvFile } from '../src/config/env-file.js'

// The README's promise: on a machine without Postgres, `npm start` with a .env serves, on an
// embedded database (PGlite) under DATA_DIR, and says how to query it with psql. That start, on an
// empty DATA_DIR (PGlite's initdb, seconds of WASM CPU), is test/readme.test.ts's quick start, run
// as written: it also checks the warning that the embedded database is for trying out, the
// organization row and a billing view there. Here: how the .env is read.

t.test('.env in the working directory is read; the real environment wins', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'envfile-'))
  writeFileSync(join(dir, '.env'), '# comment\nORGANIZATION_NAME="Müller & Söhne"\nPORT=1234\n')
  const env = withEnvFile({ PORT: '9999' }, join(dir, '.env'))
  t.equal(env.ORGANIZATION_NAME, 'Müller & Söhne')
  t.equal(env.PORT, '9999')
  t.same(withEnvFile({ A: '1' }, join(dir, 'missing.env')), { A: '1' })
})
