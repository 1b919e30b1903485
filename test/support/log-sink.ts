import { Writable } from 'node:stream'

/** Every log line written to it, as text: tests assert what is (and is not) in a log. */
export class LogSink extends Writable {
  lines: string[] = []
  _write (chunk: Buffer, _enc: string, cb: () => void): void { this.lines.push(chunk.toString('utf8')); cb() }
  get text (): string { return this.lines.join('') }
}
