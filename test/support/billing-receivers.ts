import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createHmac, timingSafeEqual } from 'node:crypto'
import type { AddressInfo } from 'node:net'

// Local receivers that follow the published shapes: Stripe's POST /v1/billing/meter_events
// (form-encoded, Bearer secret key, identifier deduplicated) and a CloudEvents 1.0 batch-mode
// endpoint (application/cloudevents-batch+json, HMAC signature). A test scripts their answers:
// `answer` is asked before each request is taken, and may say 429 with Retry-After, 500, 400.

export interface Scripted { status: number, headers?: Record<string, string>, body?: string }
type Answerer = (n: number, detail: { identifier?: string, ids?: string[] }) => Scripted | null

async function readBody (req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of req) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

export interface MeterEvent { event_name: string, customer: string, value: string, identifier: string, timestamp: number }

export class FakeStripe {
  server: Server
  /** Events Stripe kept: first delivery of each identifier. */
  events = new Map<string, MeterEvent>()
  /** Every POST that was answered 200: the first of each identifier within the dedupe window. */
  accepted: MeterEvent[] = []
  /**
   * Every well-formed POST that got past the scripted answers, a repeat included: what "sent
   * once" counts. Within the window Stripe refuses a repeat identifier with a 400 ("An event
   * already exists with identifier ..."), as real Stripe does for at least 24 hours.
   */
  posts: MeterEvent[] = []
  /** Identifiers the dedupe window still holds; forget() is the window passing. */
  private readonly remembered = new Set<string>()
  requests = 0
  problems: string[] = []
  answer: Answerer = () => null
  /** After keeping an event, drop the connection instead of answering: a send whose answer was lost. */
  loseAnswer: (identifier: string) => boolean = () => false
  constructor (readonly secretKey: string) {
    this.server = createServer((req, res) => { void this.handle(req, res) })
  }

  async listen (): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r))
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`
  }

  close (): Promise<void> { this.server.closeAllConnections(); return new Promise((r) => this.server.close(() => r())) }

  /** The dedupe window passes: every identifier may be counted again. */
  forget (): void { this.remembered.clear() }

  /** Repeat posts of an identifier Stripe already held (answered 400 as duplicates). */
  get repeats (): MeterEvent[] { return this.posts.filter((e, i) => this.posts.findIndex((f) => f.identifier === e.identifier) !== i) }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req)
    const n = this.requests++
    const reply = (status: number, value: unknown, headers: Record<string, string> = {}): void => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(value))
    }
    if (req.method !== 'POST' || req.url !== '/v1/billing/meter_events') return reply(404, { error: { type: 'invalid_request_error', message: `Unrecognized request URL (${req.method}: ${req.url})` } })
    if (req.headers.authorization !== `Bearer ${this.secretKey}`) return reply(401, { error: { type: 'invalid_request_error', message: 'Invalid API Key provided' } })
    if (!String(req.headers['content-type']).startsWith('application/x-www-form-urlencoded')) { this.problems.push(`content-type ${req.headers['content-type']}`); return reply(400, { error: { message: 'form expected' } }) }
    const f = new URLSearchParams(body)
    const ev: MeterEvent = {
      event_name: f.get('event_name') ?? '', customer: f.get('payload[stripe_customer_id]') ?? '', value: f.get('payload[value]') ?? '',
      identifier: f.get('identifier') ?? '', timestamp: Number(f.get('timestamp')),
    }
    const missing = (['event_name', 'payload[stripe_customer_id]', 'payload[value]', 'identifier', 'timestamp'] as const).filter((k) => !f.get(k))
    if (missing.length > 0) { this.problems.push(`missing ${missing.join(',')}`); return reply(400, { error: { type: 'invalid_request_error', message: `Missing required param: ${missing[0]}.` } }) }
    if (!/^\d+$/.test(ev.value)) { this.problems.push(`value ${ev.value}`); return reply(400, { error: { message: 'Invalid integer value' } }) }
    if (ev.timestamp < Date.now() / 1000 - 35 * 86400 || ev.timestamp > Date.now() / 1000 + 300) {
      this.problems.push(`timestamp ${ev.timestamp}`)
      return reply(400, { error: { type: 'invalid_request_error', message: 'Timestamp must be within the past 35 days' } })
    }
    const scripted = this.answer(n, { identifier: ev.identifier })
    if (scripted !== null) { res.writeHead(scripted.status, { 'content-type': 'application/json', ...scripted.headers }).end(scripted.body ?? '{"error":{"message":"scripted"}}'); return }
    this.posts.push(ev)
    if (this.remembered.has(ev.identifier)) {
      return reply(400, { error: { type: 'invalid_request_error', message: `An event already exists with identifier ${ev.identifier}.` } }, { 'stripe-should-retry': 'false' })
    }
    this.remembered.add(ev.identifier)
    if (!this.events.has(ev.identifier)) this.events.set(ev.identifier, ev)
    this.accepted.push(ev)
    if (this.loseAnswer(ev.identifier)) { res.socket?.destroy(); return }
    reply(200, { object: 'billing.meter_event', event_name: ev.event_name, identifier: ev.identifier, payload: { stripe_customer_id: ev.customer, value: ev.value }, timestamp: ev.timestamp })
  }
}

export interface CloudEvent { specversion: string, id: string, source: string, type: string, subject: string, time: string, data: Record<string, any> }

export class FakeCloudEvents {
  server: Server
  /** First delivery of each (source, id), as OpenMeter dedupes. */
  events = new Map<string, CloudEvent>()
  accepted: CloudEvent[] = []
  batches: number[] = []
  requests = 0
  problems: string[] = []
  answer: Answerer = () => null
  onHeld: (() => void) | null = null
  constructor (readonly secret: string | undefined) {
    this.server = createServer((req, res) => { void this.handle(req, res) })
  }

  async listen (): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r))
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/events`
  }

  close (): Promise<void> { this.server.closeAllConnections(); return new Promise((r) => this.server.close(() => r())) }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req)
    const n = this.requests++
    if (req.headers['content-type'] !== 'application/cloudevents-batch+json') { this.problems.push(`content-type ${req.headers['content-type']}`); res.writeHead(415).end(); return }
    if (this.secret !== undefined) {
      const want = createHmac('sha256', this.secret).update(body).digest()
      const got = Buffer.from(String(req.headers['x-usage-proxy-signature'] ?? ''), 'hex')
      if (got.length !== want.length || !timingSafeEqual(got, want)) { this.problems.push('bad signature'); res.writeHead(401).end('bad signature'); return }
    }
    let events: CloudEvent[]
    try { events = JSON.parse(body) } catch { this.problems.push('not JSON'); res.writeHead(400).end('not JSON'); return }
    if (!Array.isArray(events)) { this.problems.push('not an array'); res.writeHead(400).end(); return }
    for (const e of events) {
      if (e.specversion !== '1.0' || !e.id || !e.source || !e.type) { this.problems.push(`not a CloudEvent: ${JSON.stringify(e).slice(0, 100)}`); res.writeHead(400).end('bad event'); return }
    }
    const scripted = this.answer(n, { ids: events.map((e) => e.id) })
    if (scripted !== null && scripted.status !== 0) { res.writeHead(scripted.status, scripted.headers ?? {}).end(scripted.body ?? ''); return }
    this.batches.push(events.length)
    for (const e of events) {
      const key = `${e.source}\u0000${e.id}`
      if (!this.events.has(key)) this.events.set(key, e)
      this.accepted.push(e)
    }
    // Status 0: the events are taken and the answer never comes (the sender dies waiting for it).
    if (scripted?.status === 0) { this.onHeld?.(); return }
    res.writeHead(202).end()
  }
}
