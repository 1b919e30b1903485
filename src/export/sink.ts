// The contract between the export layer and a receiver. The layer reads committed ledger rows in
// a fixed order, hands a sink at most `batchSize` of them at a time, and records what the sink
// answers for each row: delivered, try again later, or refused for good. A sink never touches the
// cursor, the lease or the acknowledgements; it only delivers and says how it went.

import type postgres from 'postgres'

/** The layer's transaction, as a sink's settle hook receives it. */
export type ExportTx = postgres.TransactionSql<{}>

/** One committed usage row as the export layer reads it. Money is exact decimal text. */
export interface ExportRow {
  /** The sidecar's id for the row: stable, the receiver's dedupe key when there is no generation id. */
  eventId: string
  /** OpenRouter's generation id, or null (refusals, errors before routing). */
  generationId: string | null
  organizationId: string
  userId: string | null
  externalUserId: string
  /** Sorted, duplicate-free group ids, [] for none. */
  groups: string[]
  apiKeyId: string | null
  endpoint: string
  /** The model answered when known, else the model asked for, else null. */
  model: string | null
  requestedModel: string | null
  provider: string | null
  kind: string
  outcome: string
  status: number
  streamed: boolean
  promptTokens: number | null
  completionTokens: number | null
  totalTokens: number | null
  cachedTokens: number | null
  reasoningTokens: number | null
  /** Exact decimal text (what OpenRouter charged), or null when nothing was charged or known. */
  costUsd: string | null
  /** Exact decimal text (cost plus the organization's markup), or null. */
  billedCostUsd: string | null
  /** Upstream dispatch to last byte, milliseconds, or null. */
  latencyMs: number | null
  /** When the request arrived, ISO 8601. */
  createdAt: string
}

/** The stable id a receiver dedupes on: the generation id when there is one, else the event id. */
export function exportId (row: Pick<ExportRow, 'eventId' | 'generationId'>): string {
  return row.generationId ?? row.eventId
}

/** What a sink says about one row. */
export type RowResult =
  /** Delivered (or deliberately not sent, such as a row this receiver does not take). */
  | { status: 'ok' }
  /** Not delivered this time; the layer retries it, not before `afterMs` when given (Retry-After). */
  | { status: 'retry', afterMs?: number, reason: string }
  /** Refused for good: the layer sets it aside with the reason and goes on with the rest. */
  | { status: 'rejected', reason: string }

/** What the layer gives a sink with each batch. */
export interface SendContext {
  /** Aborted when the exporter stops or loses its lease: stop sending, answer 'retry'. */
  signal: AbortSignal
  /**
   * The exporter's lease (holder and token), for state a sink writes before its requests: written
   * only while this holder still has the lease (the Stripe sink's attempts, sql/024).
   */
  lease?: { org: string, sink: string, holder: string, token: string }
}

/**
 * A receiver. `send` answers one result per row, in the rows' order (same length). It must not
 * throw for a receiver's failure: a thrown error counts as 'retry' for every row of the batch.
 */
export interface Sink {
  /** Short, stable, lowercase: the cursor's key in Postgres and the label in /metrics. */
  readonly name: string
  /** How many rows one send may carry. */
  readonly batchSize: number
  send (rows: readonly ExportRow[], ctx: SendContext): Promise<RowResult[]>
  /**
   * Optional: state of the sink's own that must commit together with the acknowledgements of a
   * batch (the Stripe sink's running totals). Called inside the layer's fenced transaction, after
   * `send`, with the same rows and results; a throw rolls the batch's acknowledgements back.
   */
  settle?: (tx: ExportTx, rows: readonly ExportRow[], results: readonly RowResult[]) => Promise<void>
  /** Releases what the sink holds (sockets, SDK providers) when the exporter stops. */
  close?: () => Promise<void>
}
