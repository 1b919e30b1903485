// Breaks of the budgets' estimate (src/budgets/prompt-counts.ts, estimate.ts, prices.ts and the
// admission's input in proxy/metered.ts): each makes an estimate that is not an upper
// bound, or prices media as text, and a test must see it.
const UNIT = 'test/estimate.test.ts'
const CORPUS = 'test/estimate-corpus.test.ts'
const E2E = 'test/estimate-budgets.test.ts'
const COUNTS = 'src/budgets/prompt-counts.ts'
const ESTIMATE = 'src/budgets/estimate.ts'

export const BREAKS = [
  {
    name: 's8est: a non-ASCII byte costs half a token',
    file: COUNTS,
    search: '    } else {\n      cost = T\n    }',
    replace: '    } else {\n      cost = T / 2\n    }',
    tests: [CORPUS],
  },
  {
    name: 's8est: a \\u escape costs one token',
    file: COUNTS,
    search: 'sum += 3 * T + (prev === SPACE * CLASSES ? T : 0)',
    replace: 'sum += T + (prev === SPACE * CLASSES ? T : 0)',
    tests: [CORPUS],
  },
  {
    name: 's8est: consonant after consonant is free (letters by run only)',
    file: COUNTS,
    search: 'cost = !isLetter(prev) || isVowel(c) === isVowel(prev) || (c >= UPPER_VOWEL && prev <= LOWER_CONSONANT) ? T : 0',
    replace: 'cost = !isLetter(prev) || (c >= UPPER_VOWEL && prev <= LOWER_CONSONANT) ? T : 0',
    tests: [CORPUS],
  },
  {
    name: 's8est: case changes are free',
    file: COUNTS,
    search: 'cost = !isLetter(prev) || isVowel(c) === isVowel(prev) || (c >= UPPER_VOWEL && prev <= LOWER_CONSONANT) ? T : 0',
    replace: 'cost = !isLetter(prev) || isVowel(c) === isVowel(prev) ? T : 0',
    tests: [CORPUS],
  },
  {
    name: 's8est: a digit run costs one token whatever its length',
    file: COUNTS,
    search: 'cost = prev === DIGIT ? T / 3 : T',
    replace: 'cost = prev === DIGIT ? 0 : T',
    tests: [CORPUS],
  },
  {
    name: 's8est: a lone space before a digit is free',
    file: COUNTS,
    search: "const space = prev === SPACE && !isLetter(c) && c !== PUNCT && c !== SPACE && c !== BREAK ? T : 0",
    replace: 'const space = 0',
    tests: [CORPUS],
  },
  {
    name: 's8est: every byte is a token (bytes as tokens for English)',
    file: COUNTS,
    search: 'STEP[prev * CLASSES + c] = (cost + space) << 8 | next * CLASSES',
    replace: 'STEP[prev * CLASSES + c] = Math.max(T, cost + space) << 8 | next * CLASSES',
    tests: [CORPUS],
  },
  {
    name: "s8est: an image's base64 is counted as text",
    file: COUNTS,
    search: '        if (kind !== 0) {',
    replace: '        if (kind === -1) {',
    tests: [UNIT, E2E],
  },
  {
    name: 's8est: media keys count anywhere in the body, tools included',
    file: COUNTS,
    search: '(this.section === K_MESSAGES || this.section === K_INPUT)',
    replace: 'true',
    tests: [UNIT],
  },
  {
    name: "s8est: any url is an image, not only image_url's",
    file: COUNTS,
    search: 'if (key === K_URL && parent === K_IMAGE_URL) return IMAGE',
    replace: 'if (key === K_URL) return IMAGE',
    tests: [UNIT],
  },
  {
    name: 's8est: an escaped quote ends a media string',
    file: COUNTS,
    search: 'if ((slashes & 1) === 0) return q',
    replace: 'return q',
    tests: [UNIT],
  },
  {
    name: 's8est: a large body is counted in one turn',
    file: COUNTS,
    search: 'const stop = Math.min(n, this.i + Math.max(1, maxBytes))',
    replace: 'const stop = n',
    tests: [UNIT],
  },
  {
    name: 's8est: a string cut by a slice loses its place',
    file: COUNTS,
    search: '        if (!text.closed) { i = end; break }',
    replace: '        if (!text.closed) { this.stringStart = -1; i = end; break }',
    tests: [UNIT],
  },
  {
    name: "s8est: the model's image price is ignored (every image at BUDGET_IMAGE_TOKENS)",
    file: ESTIMATE,
    search: 'const imagePriced = p.image !== null && p.image > 0n',
    replace: 'const imagePriced = false',
    tests: [UNIT],
  },
  {
    name: 's8est: completion not capped by top_provider.max_completion_tokens',
    file: ESTIMATE,
    search: 'if (p.maxCompletionTokens !== null && p.maxCompletionTokens < completionTokens)',
    replace: 'if (p.maxCompletionTokens === -1)',
    tests: [UNIT, E2E],
  },
  {
    name: 's8est: the prompt is not capped by context_length',
    file: ESTIMATE,
    search: '  if (p.contextLength !== null) {',
    replace: '  if (p.contextLength === -1) {',
    tests: [UNIT],
  },
  {
    name: 's8est: audio at the prompt price',
    file: ESTIMATE,
    search: 'const audioPrice = max(promptPrice, p.audio)',
    replace: 'const audioPrice = promptPrice',
    tests: [UNIT],
  },
  {
    name: 's8est: cache_control does not raise the prompt price',
    file: ESTIMATE,
    search: 'const promptPrice = c.cacheWrite ? max(p.prompt, p.cacheWrite) : p.prompt',
    replace: 'const promptPrice = p.prompt',
    tests: [UNIT],
  },
  {
    name: 's8est: reasoning tokens at the completion price',
    file: ESTIMATE,
    search: 'BigInt(completionTokens) * max(p.completion, p.reasoning)',
    replace: 'BigInt(completionTokens) * p.completion',
    tests: [UNIT],
  },
  {
    name: "s8est: /models' top_provider read from the wrong field",
    file: 'src/budgets/prices.ts',
    search: '(top as Record<string, unknown>).max_completion_tokens',
    replace: '(top as Record<string, unknown>).context_length',
    tests: [UNIT],
  },
  {
    name: 's8est: the admission gets no body to count',
    file: 'src/proxy/metered.ts',
    search: 'ctx.limits.admit(res, rec, body.bytes, ',
    replace: 'ctx.limits.admit(res, rec, Buffer.alloc(0), ',
    tests: [E2E],
  },
]
