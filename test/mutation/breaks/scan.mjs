// Breaks of the request path's byte scan of the first message, identity normalization, multipart
// parameters, and the key gauges of /metrics.
export const BREAKS = [
  // No JSON.parse on client bytes; the first message read by the body's own scan.
  {
    name: 's8scan: the single message is parsed again with JSON.parse',
    file: 'src/proxy/body/json-body.ts',
    search: '    return f !== null && f.items === 1 ? [f.message] : null',
    replace: "    const span = this.fields.get('messages')\n    return f !== null && f.items === 1 && span ? [(JSON.parse(this.bytes.toString('utf8', span.start, span.end)) as unknown[])[0] as MessageStart] : null",
    tests: ['test/body.test.ts'],
  },
  {
    name: 's8scan: a second message is not counted (a history reads as one message)',
    file: 'src/proxy/body/first-message.ts',
    search: '      if (++this.items >= 2) this.wanted = MESSAGES',
    replace: '      if (++this.items >= 2) { this.items = 1; this.wanted = MESSAGES }',
    tests: ['test/json-body.test.ts'],
  },
  {
    name: 's8scan: a content string is read whole, unbounded',
    file: 'src/proxy/body/first-message.ts',
    search: '    } else if (m.content !== null) out.content = decodeJsonString(this.bytes, m.content.start, m.content.end, TEXT_BYTES)',
    replace: '    } else if (m.content !== null) out.content = decodeJsonString(this.bytes, m.content.start, m.content.end)',
    tests: ['test/first-message.test.ts'],
  },
  {
    name: 's8scan: parts are not bounded by MAX_PARTS',
    file: 'src/proxy/body/first-message.ts',
    search: '      if (this.parts !== null && this.parts.length < MAX_PARTS) this.parts.push(this.part ?? { type: NONE, text: NONE })',
    replace: '      if (this.parts !== null) this.parts.push(this.part ?? { type: NONE, text: NONE })',
    tests: ['test/first-message.test.ts'],
  },
  {
    name: 's8scan: the first duplicate role wins instead of the last',
    file: 'src/proxy/body/first-message.ts',
    search: '        m.role = b[start] === 0x22 && end - start - 2 <= NAME_BYTES ? { start, end } : NONE',
    replace: '        if (m.role === NONE) m.role = b[start] === 0x22 && end - start - 2 <= NAME_BYTES ? { start, end } : NONE',
    tests: ['test/json-body.test.ts'],
  },
  {
    name: 's8scan: a later top-level array resets what the messages member held',
    file: 'src/proxy/body/json-body.ts',
    search: "    else if (key === 'messages') this.first = this.reader?.result(span.start) ?? null",
    replace: "    if (key === 'messages' || this.first !== null) this.first = this.reader?.result(this.fields.get('messages')!.start) ?? null",
    tests: ['test/first-message.test.ts'],
  },
  // Reporting one level more than the reader wants survives, and is equivalent: the reader
  // ignores what it did not ask for (`wanted` only saves work on a long history). Its opposite
  // is not: a scanner that does not re-read `wanted` after an opening reports nothing below it.
  {
    name: 's8scan: the scanner does not re-read what the deep visitor wants after an opening',
    file: 'src/proxy/body/json-scan.ts',
    search: '{ this.deepOpen(depth, i); deepLevels = deep.wanted }',
    replace: '{ this.deepOpen(depth, i) }',
    tests: ['test/json-body.test.ts', 'test/first-message.test.ts'],
  },
  {
    name: 's8scan: a \\u escape decodes its first three digits only',
    file: 'src/proxy/body/json-text.ts',
    search: '(HEX[bytes[j + 2]] << 12) | (HEX[bytes[j + 3]] << 8) | (HEX[bytes[j + 4]] << 4) | HEX[bytes[j + 5]]',
    replace: '(HEX[bytes[j + 2]] << 12) | (HEX[bytes[j + 3]] << 8) | (HEX[bytes[j + 4]] << 4)',
    tests: ['test/first-message.test.ts', 'test/json-body.test.ts'],
  },
  {
    name: 's8scan: a cut string may end inside a UTF-8 character',
    file: 'src/proxy/body/json-text.ts',
    search: '  if (cut) while (to > from && (bytes[to] & 0xc0) === 0x80) to--',
    replace: '  if (cut) void to',
    tests: ['test/first-message.test.ts'],
  },
  {
    name: 's8scan: string fields decoded without the FIELD_BYTES bound',
    file: 'src/proxy/body/json-body.ts',
    search: 'export function stringAt (bytes: Buffer, span: Span, maxBytes = FIELD_BYTES): string | undefined {',
    replace: 'export function stringAt (bytes: Buffer, span: Span, maxBytes = Infinity): string | undefined {',
    tests: ['test/first-message.test.ts'],
  },
  {
    name: 's8scan: JWTs of any size are decoded',
    file: 'src/identity/jwt.ts',
    search: "  if (token.length > MAX_TOKEN_BYTES) throw new JwtError('token too large')",
    replace: '',
    tests: ['test/identity-empty.test.ts'],
  },
  // An id that normalizes to nothing is no identity.
  {
    name: 's8scan: an id of only control characters and whitespace is a user',
    file: 'src/identity/user-id.ts',
    search: '  return NOTHING.test(id) ? null : id',
    replace: "  return id === '' ? null : id",
    tests: ['test/identity-empty.test.ts'],
  },
  {
    name: 's8scan: the body user is not normalized',
    file: 'src/identity/identify.ts',
    search: "    const userId = bounded(normalizeId(bodyUser), 'the \"user\" field')\n",
    replace: "    const userId = bounded(bodyUser === '' ? null : bodyUser, 'the \"user\" field')\n",
    tests: ['test/identity-empty.test.ts'],
  },
  {
    name: 's8scan: an identity header naming nobody is a user',
    file: 'src/identity/identify.ts',
    search: '    const userId = bounded(normalizeId(sent), o.userIdHeader)\n',
    replace: '    const userId = bounded(sent, o.userIdHeader)\n',
    tests: ['test/identity-empty.test.ts'],
  },
  {
    name: 's8scan: a JWT sub naming nobody is a user',
    file: 'src/identity/identify.ts',
    search: '      const userId = bounded(normalizeId(c.sub), `the sub claim of ${o.jwtHeader}`)\n',
    replace: '      const userId = bounded(c.sub, `the sub claim of ${o.jwtHeader}`)\n',
    tests: ['test/identity-empty.test.ts'],
  },
  {
    name: 's8scan: REQUIRE_USER_IDENTITY lets an empty body user through as the organization',
    file: 'src/identity/identify.ts',
    search: '  if (o.requireUserIdentity) {\n    const why',
    replace: '  if (o.requireUserIdentity && empty === null) {\n    const why',
    tests: ['test/identity-empty.test.ts'],
  },
  // Multipart parameters given twice.
  {
    name: 's8scan: a duplicated parameter keeps the first (boundary, name)',
    file: 'src/proxy/body/multipart.ts',
    search: '    if (out.has(key)) return null\n    out.set(key, value)',
    replace: '    if (!out.has(key)) out.set(key, value)',
    tests: ['test/multipart.test.ts', 'test/body.test.ts'],
  },
  {
    name: 's8scan: a parameter without = is skipped over',
    file: 'src/proxy/body/multipart.ts',
    search: "    if (eq === -1 || (semi !== -1 && semi < eq)) return null // `; flag;`: parsers disagree on what follows",
    replace: '    if (eq === -1) return out',
    tests: ['test/multipart.test.ts'],
  },
  {
    name: 's8scan: a refused multipart content type is answered 415, not 400',
    file: 'src/proxy/metered.ts',
    search: "    if ('error' in type) { sendError(res, 400, 'invalid_request_error', 'invalid_multipart', type.error); return null }",
    replace: "    if ('error' in type) { sendError(res, 415, 'invalid_request_error', 'unsupported_media_type', type.error); return null }",
    tests: ['test/body.test.ts'],
  },
  // The key gauges only behind METRICS_API_KEY or on METRICS_PORT.
  {
    name: 's8scan: the key gauges are shown on the open data plane',
    file: 'src/ops/metrics.ts',
    search: "  return o.keyBalance !== undefined && ((o.apiKey !== undefined && o.apiKey !== '') || o.ownPort === true)",
    replace: '  return o.keyBalance !== undefined',
    tests: ['test/ops.test.ts'],
  },
  {
    name: 's8scan: METRICS_PORT does not count as a closed place for the key gauges',
    file: 'src/main.ts',
    search: '    ownPort: config.metrics.port !== undefined,\n',
    replace: '',
    tests: ['test/ops.test.ts'],
  },
]
