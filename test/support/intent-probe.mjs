// Preloaded into a sidecar process (NODE_OPTIONS=--import) by tests: every time a request is
// handed to undici's upstream pool, it reads the journal on disk (DATA_DIR/journal) and checks
// that the request's intent line is already there: written by write(2), not merely buffered.
// It prints one JSON line per dispatch ({"probe":"intent","onDisk":true|false}), which the test
// reads. Nothing in the sidecar is replaced; dispatch goes on unchanged.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Pool } from 'undici'

const dir = join(process.env.DATA_DIR ?? 'data', 'journal')
const dispatch = Pool.prototype.dispatch
Pool.prototype.dispatch = function (opts, handler) {
  if (opts.method === 'POST' && opts.body) {
    const user = /"user":"([^"]*)"/.exec(Buffer.from(opts.body).toString('utf8'))?.[1]
    let onDisk = false
    if (user && existsSync(dir)) {
      for (const f of readdirSync(dir)) {
        for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) {
          if (line.startsWith('{"k":"i"') && line.includes(`"externalUserId":"${user}"`)) onDisk = true
        }
      }
    }
    process.stdout.write(JSON.stringify({ probe: 'intent', user, onDisk }) + '\n')
  }
  return dispatch.call(this, opts, handler)
}
