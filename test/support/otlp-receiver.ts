import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { gunzipSync } from 'node:zlib'

// An OTLP/HTTP metrics receiver, as a collector's otlphttp receiver behaves: POST /v1/metrics
// with an ExportMetricsServiceRequest, as JSON (application/json) or protobuf
// (application/x-protobuf). Both are decoded here, the protobuf by a wire-format reader written
// from opentelemetry-proto's .proto field numbers, not by the SDK's own serializer, so a test
// checks what went over the wire. It can answer with a chosen status, or go down and come back up
// on the same port.

export interface Point {
  metric: string
  unit: string
  kind: 'histogram' | 'sum'
  /** 1 = delta, 2 = cumulative (AggregationTemporality). */
  temporality: number
  attributes: Record<string, string | number | boolean>
  resource: Record<string, string | number | boolean>
  startTimeUnixNano: string
  timeUnixNano: string
  /** Histogram: the sum of the recorded values; Sum: the value. */
  value: number
  /** Histogram: how many values were recorded; Sum: 0. */
  count: number
  bucketCounts: number[]
  explicitBounds: number[]
}

export interface Received { contentType: string, bytes: number, headers: Record<string, string | string[] | undefined>, points: Point[] }

export class OtlpReceiver {
  /** Every export the receiver answered 2xx to, decoded. */
  readonly accepted: Received[] = []
  /** Requests answered with a failure (status set by failWith). */
  refused = 0
  private server: Server | null = null
  private port = 0
  private failures: number[] = []
  private waiters: Array<() => void> = []

  get url (): string { return `http://127.0.0.1:${this.port}` }

  async start (port = 0): Promise<this> {
    const server = createServer((req, res) => { void this.handle(req, res) })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => resolve())
    })
    this.server = server
    this.port = (server.address() as AddressInfo).port
    return this
  }

  /** Closes the port (connections refused) until `up()`. */
  async down (): Promise<void> {
    const s = this.server
    this.server = null
    if (!s) return
    s.closeAllConnections()
    await new Promise<void>((resolve) => s.close(() => resolve()))
  }

  async up (): Promise<void> { await this.start(this.port) }

  /** Sent as Retry-After (seconds) with a 429 or 503 answer, when set. */
  retryAfter: string | null = null

  /** The next requests are answered with these statuses, one each, then 200 again. */
  failWith (...statuses: number[]): void { this.failures.push(...statuses) }

  /**
   * Resolves once `accepted` satisfies `ok` (checked after each accepted export); rejects after
   * `timeoutMs` with what was accepted and `explain()`, so a test that waits in vain says why.
   */
  async until (ok: (r: Received[]) => boolean, timeoutMs = 60_000, explain: () => string = () => ''): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!ok(this.accepted)) {
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`OTLP receiver: still waiting after ${timeoutMs} ms, ${this.accepted.length} exports accepted${explain()}`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => { clearTimeout(timer); resolve() })
      })
    }
  }

  async close (): Promise<void> { await this.down() }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    let body = Buffer.concat(chunks)
    if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body)
    const contentType = String(req.headers['content-type'] ?? '').split(';')[0]
    if (req.method !== 'POST' || req.url !== '/v1/metrics') { res.writeHead(404).end(); return }
    const failure = this.failures.shift()
    if (failure !== undefined) {
      this.refused++
      const headers: Record<string, string> = { 'content-type': 'application/json' }
      if ((failure === 429 || failure === 503) && this.retryAfter !== null) headers['retry-after'] = this.retryAfter
      res.writeHead(failure, headers).end('{"code":14,"message":"unavailable"}')
      return
    }
    let points: Point[]
    try {
      points = contentType === 'application/json' ? fromJson(JSON.parse(body.toString('utf8'))) : contentType === 'application/x-protobuf' ? fromProtobuf(body) : null!
      if (!points) throw new Error(`unexpected content-type ${contentType}`)
    } catch (err) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end(String(err))
      return
    }
    this.accepted.push({ contentType, bytes: body.length, headers: req.headers, points })
    // The answer an OTLP receiver gives: an empty ExportMetricsServiceResponse.
    if (contentType === 'application/json') res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    else res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end()
    for (const w of this.waiters.splice(0)) w()
  }
}

// ---- JSON (the OTLP/JSON mapping: lowerCamelCase fields, 64-bit integers as strings or numbers)

type Json = any

function attrsJson (list: Json[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {}
  for (const kv of list ?? []) {
    const v = kv.value ?? {}
    if ('stringValue' in v) out[kv.key] = v.stringValue
    else if ('intValue' in v) out[kv.key] = Number(v.intValue)
    else if ('doubleValue' in v) out[kv.key] = Number(v.doubleValue)
    else if ('boolValue' in v) out[kv.key] = Boolean(v.boolValue)
  }
  return out
}

export function fromJson (req: Json): Point[] {
  const points: Point[] = []
  for (const rm of req.resourceMetrics ?? []) {
    const resource = attrsJson(rm.resource?.attributes)
    for (const sm of rm.scopeMetrics ?? []) {
      for (const m of sm.metrics ?? []) {
        const base = { metric: m.name, unit: m.unit ?? '', resource }
        if (m.histogram) {
          for (const dp of m.histogram.dataPoints ?? []) {
            points.push({
              ...base, kind: 'histogram', temporality: Number(m.histogram.aggregationTemporality), attributes: attrsJson(dp.attributes),
              startTimeUnixNano: String(dp.startTimeUnixNano), timeUnixNano: String(dp.timeUnixNano),
              value: Number(dp.sum ?? 0), count: Number(dp.count), bucketCounts: (dp.bucketCounts ?? []).map(Number), explicitBounds: (dp.explicitBounds ?? []).map(Number),
            })
          }
        } else if (m.sum) {
          for (const dp of m.sum.dataPoints ?? []) {
            points.push({
              ...base, kind: 'sum', temporality: Number(m.sum.aggregationTemporality), attributes: attrsJson(dp.attributes),
              startTimeUnixNano: String(dp.startTimeUnixNano), timeUnixNano: String(dp.timeUnixNano),
              value: Number(dp.asDouble ?? dp.asInt ?? 0), count: 0, bucketCounts: [], explicitBounds: [],
            })
          }
        }
      }
    }
  }
  return points
}

// ---- protobuf (opentelemetry/proto/collector/metrics/v1 and metrics/v1, common/v1 field numbers)

interface Field { no: number, wire: number, varint: bigint, bytes: Buffer }

/** Splits one message into its fields (wire types 0, 1, 2 and 5). */
function fields (buf: Buffer): Field[] {
  const out: Field[] = []
  let i = 0
  const varint = (): bigint => {
    let result = 0n
    let shift = 0n
    for (;;) {
      if (i >= buf.length) throw new Error('truncated varint')
      const b = buf[i++]
      result |= BigInt(b & 0x7f) << shift
      if ((b & 0x80) === 0) return result
      shift += 7n
    }
  }
  while (i < buf.length) {
    const key = Number(varint())
    const no = key >>> 3
    const wire = key & 7
    if (wire === 0) out.push({ no, wire, varint: varint(), bytes: Buffer.alloc(0) })
    else if (wire === 1) { out.push({ no, wire, varint: 0n, bytes: buf.subarray(i, i + 8) }); i += 8 }
    else if (wire === 5) { out.push({ no, wire, varint: 0n, bytes: buf.subarray(i, i + 4) }); i += 4 }
    else if (wire === 2) {
      const len = Number(varint())
      if (i + len > buf.length) throw new Error('truncated field')
      out.push({ no, wire, varint: 0n, bytes: buf.subarray(i, i + len) })
      i += len
    } else throw new Error(`unsupported wire type ${wire}`)
  }
  return out
}

const all = (f: Field[], no: number): Field[] => f.filter((x) => x.no === no)
const one = (f: Field[], no: number): Field | undefined => f.find((x) => x.no === no)
const text = (x: Field | undefined): string => x ? x.bytes.toString('utf8') : ''
const fixed64 = (x: Field | undefined): bigint => x ? x.bytes.readBigUInt64LE(0) : 0n
const double = (x: Field | undefined): number => x ? x.bytes.readDoubleLE(0) : 0

function anyValue (buf: Buffer): string | number | boolean {
  const f = fields(buf)
  const s = one(f, 1); if (s) return text(s)
  const b = one(f, 2); if (b) return b.varint !== 0n
  const n = one(f, 3); if (n) return Number(BigInt.asIntN(64, n.varint))
  const d = one(f, 4); if (d) return double(d)
  return ''
}

function attrsProto (list: Field[]): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {}
  for (const kv of list) {
    const f = fields(kv.bytes)
    out[text(one(f, 1))] = anyValue(one(f, 2)?.bytes ?? Buffer.alloc(0))
  }
  return out
}

/** A packed (or unpacked) repeated fixed64 / double field. */
function packed64 (list: Field[], read: (b: Buffer, at: number) => number): number[] {
  const out: number[] = []
  for (const x of list) for (let at = 0; at + 8 <= x.bytes.length; at += 8) out.push(read(x.bytes, at))
  return out
}

export function fromProtobuf (body: Buffer): Point[] {
  const points: Point[] = []
  for (const rm of all(fields(body), 1)) { // ExportMetricsServiceRequest.resource_metrics
    const rmf = fields(rm.bytes)
    const resource = attrsProto(all(fields(one(rmf, 1)?.bytes ?? Buffer.alloc(0)), 1)) // Resource.attributes
    for (const sm of all(rmf, 2)) { // ResourceMetrics.scope_metrics
      for (const m of all(fields(sm.bytes), 2)) { // ScopeMetrics.metrics
        const mf = fields(m.bytes)
        const base = { metric: text(one(mf, 1)), unit: text(one(mf, 3)), resource }
        const histogram = one(mf, 9)
        const sum = one(mf, 7)
        if (histogram) {
          const hf = fields(histogram.bytes)
          for (const dp of all(hf, 1)) {
            const d = fields(dp.bytes)
            points.push({
              ...base, kind: 'histogram', temporality: Number(one(hf, 2)?.varint ?? 0n), attributes: attrsProto(all(d, 9)),
              startTimeUnixNano: String(fixed64(one(d, 2))), timeUnixNano: String(fixed64(one(d, 3))),
              value: double(one(d, 5)), count: Number(fixed64(one(d, 4))),
              bucketCounts: packed64(all(d, 6), (b, at) => Number(b.readBigUInt64LE(at))), explicitBounds: packed64(all(d, 7), (b, at) => b.readDoubleLE(at)),
            })
          }
        } else if (sum) {
          const sf = fields(sum.bytes)
          for (const dp of all(sf, 1)) {
            const d = fields(dp.bytes)
            const asInt = one(d, 6)
            points.push({
              ...base, kind: 'sum', temporality: Number(one(sf, 2)?.varint ?? 0n), attributes: attrsProto(all(d, 7)),
              startTimeUnixNano: String(fixed64(one(d, 2))), timeUnixNano: String(fixed64(one(d, 3))),
              value: asInt ? Number(BigInt.asIntN(64, fixed64(asInt))) : double(one(d, 4)), count: 0, bucketCounts: [], explicitBounds: [],
            })
          }
        }
      }
    }
  }
  return points
}

/**
 * What a metrics backend would show as the total of `metric` over points that match `where`:
 * delta points add up; of cumulative points, each stream (resource instance, attributes, start
 * time) counts with its latest value only, and the streams add up.
 */
export function total (received: Received[], metric: string, where: (p: Point) => boolean = () => true, field: 'value' | 'count' = 'value'): number {
  const latest = new Map<string, Point>()
  let deltas = 0
  for (const r of received) {
    for (const p of r.points) {
      if (p.metric !== metric || !where(p)) continue
      if (p.temporality === 1) { deltas += p[field]; continue }
      const key = JSON.stringify([p.resource['service.instance.id'], Object.entries(p.attributes).sort(), p.startTimeUnixNano])
      const prev = latest.get(key)
      if (!prev || BigInt(p.timeUnixNano) >= BigInt(prev.timeUnixNano)) latest.set(key, p)
    }
  }
  let sum = deltas
  for (const p of latest.values()) sum += p[field]
  return sum
}
