// Cost of the access log and the responses counter per exchange, alone (no network):
//   npm run build && node bench/access-log.js
// Prints µs per exchange with ACCESS_LOG on and off, lines written to /dev/null.
import { EventEmitter } from 'node:events'
import pino from 'pino'
import { createAccessLog } from '../dist/proxy/access-log.js'
import { createMetrics } from '../dist/ops/metrics.js'
import { createLogger } from '../dist/lib/log.js'

const log = createLogger('info', pino.destination({ dest: '/dev/null', sync: false }))
const rec = { status: 200, model: 'm', externalUserId: 'x', generationId: 'gen-1', outcome: 'ok', kind: 'chat', ttfbMs: 1 }
const N = 200_000
for (const enabled of [true, false, true, false]) {
  const metrics = createMetrics(() => null)
  const access = createAccessLog({ log, enabled, count: metrics.response })
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < N; i++) {
    const req = { method: 'POST', url: '/v1/chat/completions', complete: true }
    const res = Object.assign(new EventEmitter(), { headersSent: true, statusCode: 200, writableFinished: true })
    access.begin(req, res)
    access.record(res, rec)
    res.emit('close')
  }
  console.log(`ACCESS_LOG=${enabled ? 'on ' : 'off'} ${(Number(process.hrtime.bigint() - t0) / N / 1000).toFixed(2)} µs/exchange`)
}
