import type { ServerResponse } from 'node:http'

// RFC 4180: CRLF line ends, a header row, a field quoted when it holds a comma, a quote, CR or
// LF, quotes doubled. Decimal strings go out as Postgres wrote them.

export function csvField (v: unknown): string {
  if (v === null || v === undefined) return ''
  const s = defuse(String(v))
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s
}

/**
 * User names, chat ids and models come from clients: a cell starting like a formula (=, +, @, a
 * tab or CR, or - that is not a whole number) would run as one in a spreadsheet, so it gets a leading
 * apostrophe (OWASP "CSV injection"). Numbers, negative ones included, go out as they are.
 */
export function defuse (s: string): string {
  return /^[=+@\t\r]|^-(?!\d*\.?\d+$)/.test(s) ? `'${s}` : s
}

export function csvLine (fields: readonly unknown[]): string {
  return fields.map(csvField).join(',') + '\r\n'
}

/** Writes rows as they come from a cursor, waiting for the client to drain: never the whole table in memory. */
export async function streamCsv<T> (res: ServerResponse, filename: string, columns: readonly string[],
  batches: AsyncIterable<T[]>, toFields: (row: T) => readonly unknown[]): Promise<void> {
  res.writeHead(200, {
    'content-type': 'text/csv; charset=utf-8; header=present',
    'content-disposition': `attachment; filename="${filename}"`,
    'cache-control': 'no-store',
  })
  res.write(csvLine(columns))
  for await (const rows of batches) {
    let chunk = ''
    for (const row of rows) chunk += csvLine(toFields(row))
    if (!res.write(chunk)) await drainOrClose(res)
    // A client that left never drains: stop reading the cursor (leaving the loop closes it).
    if (res.destroyed) return
  }
  res.end()
}

function drainOrClose (res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => { res.off('drain', done); res.off('close', done); resolve() }
    res.on('drain', done)
    res.on('close', done)
  })
}
