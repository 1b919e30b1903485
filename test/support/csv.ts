// A strict RFC 4180 reader for tests: CRLF records, quoted fields with doubled quotes.
export function parseCsv (text: string): string[][] {
  const rows: string[][] = []
  let row: string[] = []
  let field = ''
  let i = 0
  let quoted = false
  while (i < text.length) {
    const c = text[i]
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i += 2; continue }
      if (c === '"') { quoted = false; i++; continue }
      field += c; i++; continue
    }
    if (c === '"' && field === '') { quoted = true; i++; continue }
    if (c === ',') { row.push(field); field = ''; i++; continue }
    if (c === '\r' && text[i + 1] === '\n') { row.push(field); rows.push(row); row = []; field = ''; i += 2; continue }
    if (c === '\n' || c === '\r' || c === '"') throw new Error(`not RFC 4180 at offset ${i}`)
    field += c; i++
  }
  if (field !== '' || row.length > 0) throw new Error('last record does not end with CRLF')
  return rows
}
