import { randomUUID } from 'node:crypto'

const MS_48 = 2 ** 48

/**
 * A UUID of version 7 (RFC 9562): the Unix time in milliseconds in the first 48 bits, then the
 * version, 74 random bits and the variant. Ids minted in time order land on the right-hand edge
 * of a b-tree instead of on a random leaf page: usage_events' primary key, budget reservations.
 * 74 random bits keep ids unique and unguessable; the time they show is the row's created_at.
 */
export function uuid7 (now = Date.now()): string {
  const ms = Number.isFinite(now) ? ((Math.floor(now) % MS_48) + MS_48) % MS_48 : 0
  const t = ms.toString(16).padStart(12, '0')
  const r = randomUUID() // xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx: its variant nibble V is RFC 9562's too
  return `${t.slice(0, 8)}-${t.slice(8)}-7${r.slice(15, 18)}-${r.slice(19)}`
}
