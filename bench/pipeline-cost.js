// What one query in flight per connection (poolOptions' max_pipeline: 0) costs against
// postgres.js's default pipelining, on the sidecar's own pool options, direct to Postgres:
// queries without parameters (the only ones that pipelined) and with them (describe-first, which
// nothing was ever pipelined behind), c concurrent callers on a pool of 4, alternating reps.
//   node bench/pipeline-cost.js            (N=20000 queries a rep, C=64, REPS=3)
import { join } from 'node:path'
import postgres from 'postgres'
import { freshDatabase } from './db.js'
import { ROOT } from './targets.js'
const { poolOptions } = await import(join(ROOT, 'dist', 'db', 'connect.js'))
const N = Number(process.env.N ?? 20000), C = Number(process.env.C ?? 64), REPS = Number(process.env.REPS ?? 3)
const url = await freshDatabase('usage_proxy_pipeline')
const pools = { pipelined: { ...poolOptions(4), max_pipeline: 100 }, 'one in flight': poolOptions(4) }
const queries = { 'no parameters': (sql) => sql`select 1 as v`, 'with parameters': (sql, i) => sql`select ${i}::int as v` }
const results = {}
for (let rep = 0; rep < REPS; rep++) {
  for (const [qname, q] of Object.entries(queries)) {
    for (const [pname, opts] of Object.entries(pools)) {
      const sql = postgres(url, opts)
      await Promise.all(Array.from({ length: 4 }, () => sql`select 1`))
      let next = 0
      const t0 = performance.now(), c0 = process.cpuUsage()
      await Promise.all(Array.from({ length: C }, async () => { while (next < N) await q(sql, next++) }))
      const ms = performance.now() - t0, cpu = process.cpuUsage(c0)
      await sql.end({ timeout: 1 })
      ;(results[`${qname}, ${pname}`] ??= []).push({ perSec: Math.round(N / ms * 1000), clientCpuUsPerQuery: +((cpu.user + cpu.system) / N).toFixed(1) })
    }
  }
}
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)]
console.log(`N=${N} C=${C} pool of 4, ${REPS} alternating reps`)
for (const [k, rs] of Object.entries(results)) console.log(`${k.padEnd(34)} queries/s ${rs.map((r) => r.perSec).join(' / ')} (median ${median(rs.map((r) => r.perSec))}), client CPU µs/query ${median(rs.map((r) => r.clientCpuUsPerQuery))}`)
