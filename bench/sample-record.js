// One finished chat record of the bench organization, as the ledger writes it: users and models
// repeat (200 users, `models` models) so rollups meet on the same rows.
import { randomUUID } from 'node:crypto'

let seq = 0
export function sampleRecord (i, { prefix = 'gen-cost', models = 7, org = 'bench_org' } = {}) {
  return {
    eventId: randomUUID(), generationId: `${prefix}-${seq++}`, organizationId: org, userId: `user-${i % 200}`, externalUserId: `bench_org_u${i % 200}`,
    endpoint: 'chat/completions', model: `vendor/model-${i % models}`, servedModel: `vendor/model-${i % models}`, provider: 'P', streamed: true, status: 200, outcome: 'ok',
    finishReason: 'stop', errorMessage: null, usageSource: 'inline', promptTokens: 42, completionTokens: 24, totalTokens: 66, cachedTokens: 0, reasoningTokens: 0,
    costUsd: '0.0000267', upstreamCostUsd: null, isByok: false, markupPercent: '0', latencyMs: 812.25, ttfbMs: 120.5, chatId: null,
    kind: i % 10 === 0 ? 'title_generation' : 'chat', messageId: null, createdAt: new Date().toISOString(),
  }
}
