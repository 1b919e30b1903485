import { BodyScan, type JsonBody } from '../../src/proxy/body/json-body.js'

/** The body's top-level object in one go; null when the body is not a JSON object. */
export function scanBody (raw: Buffer): JsonBody | null {
  const scan = new BodyScan(raw)
  scan.step()
  return scan.body
}
