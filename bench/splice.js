// The request body's cost without the network: copy the socket's chunks, scan, splice `user`,
// one buffer for undici. 'copy' is the path before the in-place splice (a second copy of the
// whole body per request); 'inplace' reads the body into memory with room after it.
//
//   node bench/splice.js        (after npm run build)
import { BodyScan } from '../dist/proxy/body/json-body.js'
import { requestBody } from './load.js'

for (const kind of ['chat500k', 'image4m']) {
  const src = Buffer.from(requestBody(false, kind))
  const chunks = []
  for (let i = 0; i < src.length; i += 65536) chunks.push(src.subarray(i, i + 65536))
  const n = kind === 'image4m' ? 60 : 600
  for (const mode of ['copy', 'inplace', 'copy', 'inplace']) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < n; i++) {
      let raw
      let room = 0
      if (mode === 'copy') raw = Buffer.concat(chunks, src.length)
      else {
        const mem = Buffer.allocUnsafeSlow(src.length + 1024)
        let at = 0
        for (const c of chunks) { c.copy(mem, at); at += c.length }
        raw = mem.subarray(0, src.length)
        room = 1024
      }
      const scan = new BodyScan(raw, room)
      while (!scan.step(Infinity));
      const parts = scan.body.withUserParts('org_user_123')
      const body = parts.length === 1 ? parts[0] : Buffer.concat(parts)
      if (body.length <= src.length) throw new Error('splice lost bytes')
    }
    console.log(`${kind} ${src.length} bytes, ${mode}: ${(Number(process.hrtime.bigint() - t0) / n / 1000).toFixed(0)} µs per request (read copy + scan + splice)`)
  }
}
