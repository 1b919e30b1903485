import t from 'tap'
import { countPrompt, countPromptSliced, type PromptCounts } from '../src/budgets/prompt-counts.js'
import { AUDIO_BYTES_PER_TOKEN, estimateBilledUsd, type EstimateOptions } from '../src/budgets/estimate.js'
import { PriceList, parseModel } from '../src/budgets/prices.js'
import { createLogger } from '../src/lib/log.js'
import { LogSink } from './support/log-sink.js'

// The estimator's parts: what the byte pass counts as text and as media, how /models entries are
// read, and how counts and prices make an amount.

const count = (body: unknown): PromptCounts => countPrompt(Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)))
const b64 = (bytes: number): string => Buffer.alloc(bytes, 0xab).toString('base64')
const chat = (content: unknown, extra: Record<string, unknown> = {}) => ({ model: 'm', messages: [{ role: 'user', content }], ...extra })

t.test('media in chat messages are counted, not tokenized', async (t) => {
  const base = count(chat([{ type: 'text', text: 'hi' }])).textTokens
  const image = count(chat([{ type: 'text', text: 'hi' }, { type: 'image_url', image_url: { url: 'data:image/png;base64,' + b64(300_000) } }]))
  t.equal(image.images, 1, 'an inline image')
  t.ok(image.textTokens < base + 20, `its base64 is not text (${image.textTokens} vs ${base})`)
  const remote = count(chat([{ type: 'image_url', image_url: { url: 'https://example.com/cat.png', detail: 'high' } }, { type: 'image_url', image_url: 'https://example.com/dog.png' }]))
  t.equal(remote.images, 2, 'remote URLs (object and string forms) are images too')
  const audio = count(chat([{ type: 'input_audio', input_audio: { data: b64(48_000), format: 'wav' } }]))
  t.equal(audio.audioBytes, 48_000, 'audio: its decoded bytes')
  t.equal(audio.images + audio.files, 0)
  const file = count(chat([{ type: 'file', file: { filename: 'a.pdf', file_data: 'data:application/pdf;base64,' + b64(30_000) } }]))
  t.same([file.files, file.fileBytes], [1, 30_000], 'a file: one, with its decoded bytes')
  const anthropic = count({ model: 'm', messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: b64(3000) } }] }] })
  t.same([anthropic.files, anthropic.fileBytes], [1, 3000], 'Anthropic source data counts as a file')
  const two = count(chat([{ type: 'image_url', image_url: { url: 'data:image/jpeg;base64,' + b64(999) } }, { type: 'image_url', image_url: { url: 'data:image/jpeg;base64,' + b64(999) } }]))
  t.equal(two.images, 2, 'each image counts')
})

t.test('media in Responses input are counted', async (t) => {
  const r = count({ model: 'm', input: [{ role: 'user', content: [{ type: 'input_text', text: 'what is this' }, { type: 'input_image', image_url: 'data:image/png;base64,' + b64(90_000) }, { type: 'input_file', filename: 'x.pdf', file_data: 'data:application/pdf;base64,' + b64(6000) }] }] })
  t.equal(r.images, 1)
  t.same([r.files, r.fileBytes], [1, 6000])
  t.ok(r.textTokens < 150, `no base64 in the text (${r.textTokens})`)
})

t.test('what only looks like media is text: the model reads it', async (t) => {
  const blob = 'data:image/png;base64,' + b64(30_000)
  const asText = count(chat(blob))
  t.equal(asText.images, 0, 'a data URL as message content is text')
  t.ok(asText.textTokens > 10_000, `and counted as text (${asText.textTokens})`)
  const textPart = count(chat([{ type: 'text', text: blob }]))
  t.ok(textPart.textTokens > 10_000 && textPart.images === 0, 'in a text part too')
  const tool = count({ model: 'm', messages: [{ role: 'user', content: 'hi' }], tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', image_url: blob, url: blob, file_data: blob } } }] })
  t.equal(tool.images + tool.files, 0, 'media keys outside messages / input are text')
  t.ok(tool.textTokens > 30_000, `and counted (${tool.textTokens})`)
  const audioKey = count(chat([{ type: 'text', text: 'x', data: b64(9000) }]))
  t.equal(audioKey.audioBytes, 0, '`data` outside input_audio is not audio')
  t.ok(audioKey.textTokens > 3000)
  const nested = count(chat([{ type: 'image_url', image_url: { url: 'https://x/y.png', caption: { url: b64(6000) } } }]))
  t.equal(nested.images, 1, 'a url nested deeper than image_url is not an image')
  t.ok(nested.textTokens > 2000)
})

t.test('keys and escapes: the scanner follows the structure', async (t) => {
  // An escaped quote inside a media string does not end it early; an escaped key is not the key.
  const tricky = count('{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/a\\"b.png"}},{"type":"image_url","image_url":{"url":"https://y/c.png"}}]}]}')
  t.equal(tricky.images, 2)
  const escapedKey = count('{"messages":[{"content":[{"image\\u005furl":"' + b64(3000) + '"}]}]}')
  t.equal(escapedKey.images, 0, 'a key spelled with an escape is not matched, and its value is text')
  t.ok(escapedKey.textTokens > 1000)
  t.equal(count('{"messages":[]}').images, 0)
  t.ok(count({ model: 'm', messages: [{ role: 'user', content: [{ type: 'text', text: 'hi', cache_control: { type: 'ephemeral' } }] }] }).cacheWrite, 'cache_control is seen')
  t.notOk(count(chat('cache_control')).cacheWrite, 'as a key only')
  const deep = '{"messages":' + '['.repeat(200) + '"' + 'x'.repeat(99) + '"' + ']'.repeat(200) + '}'
  t.ok(count(deep).textTokens >= 200, 'deep nesting is counted, never thrown on')
  for (const junk of ['', '{', '{"a', '{"messages":[{"image_url":"', '{"a":"\\', '}}}]]]', '{"messages":[{"image_url":{"url":"abc']) {
    t.doesNotThrow(() => count(junk), JSON.stringify(junk))
  }
  const upload = countPrompt(Buffer.from('--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + 'x'.repeat(1000) + '\r\n--b--\r\n'))
  t.same([upload.files, upload.textTokens, upload.images], [0, 0, 0], 'a body that is not JSON (a multipart upload)...')
  t.ok(upload.audioBytes > 1000, '...counts as audio, every byte')
})

t.test('text: escapes count as what they stand for', async (t) => {
  const cjk = '中文字符'.repeat(100)
  const plain = count(chat(cjk)).textTokens
  const escaped = count(JSON.stringify(chat(cjk)).replace(/[\u0080-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'))).textTokens
  t.ok(plain >= 1200 && escaped >= 1200, `3 tokens a character at most, plain ${plain}, escaped ${escaped}`)
  t.ok(count(chat('1 2 3 4 5 6 7 8 9 0 '.repeat(50))).textTokens >= 1000, 'digits apart are a token each, spaces too')
  t.ok(count(chat('1234567890'.repeat(90))).textTokens >= 300, 'a digit run is a token per three digits')
  t.ok(count(chat('aA'.repeat(500))).textTokens >= 1000, 'alternating case is a token a letter')
  t.ok(count(chat('the cat sat on the mat '.repeat(50))).textTokens <= 600, 'plain words are about a token each')
})

t.test('counted a slice at a time: the same counts, whatever the slice', async (t) => {
  const bodies = [
    JSON.stringify(chat([{ type: 'text', text: 'Hello \"there\" 中文 \\ \n 123 ' }, { type: 'image_url', image_url: { url: 'data:image/png;base64,' + b64(3000) } }, { type: 'input_audio', input_audio: { data: b64(1200), format: 'mp3' } }])),
    JSON.stringify(chat('x'.repeat(5000) + 'é'.repeat(300))).replace(/é/g, '\\u00e9'),
    '{"messages":[{"content":[{"image_url":{"url":"https://a/b"}}],"cache_control":{}}],"image_url":"' + b64(600) + '"}',
    '{"a":"unterminated \\',
  ]
  for (const body of bodies) {
    const whole = countPrompt(Buffer.from(body))
    for (const slice of [1, 2, 3, 7, 64, 1000]) {
      t.same(await countPromptSliced(Buffer.from(body), slice), whole, `slices of ${slice}: ${body.slice(0, 40)}`)
    }
  }
  // A large body yields to the event loop between slices.
  let turns = 0
  const timer = setInterval(() => { turns++ }, 0)
  const big = Buffer.from(JSON.stringify(chat('lorem ipsum '.repeat(200_000))))
  const counts = await countPromptSliced(big, 64 * 1024)
  clearInterval(timer)
  t.same(counts, countPrompt(big))
  t.ok(turns > 0, `timers ran while a ${big.length}-byte body was counted (${turns})`)
})

const sink = new LogSink()
const models = [
  { id: 'v/vision', context_length: 1000, pricing: { prompt: '0.000003', completion: '0.000015', request: '0.0001', image: '0.0048', audio: '0.00004', input_cache_write: '0.00000375', input_cache_write_1h: '0.000006', internal_reasoning: '0.00002' }, top_provider: { context_length: 1000, max_completion_tokens: 500, is_moderated: true } },
  { id: 'v/plain', context_length: null, pricing: { prompt: '0.000001', completion: '0.000002', image: '0' }, top_provider: { max_completion_tokens: null } },
  { id: 'v/router', pricing: { prompt: '-1', completion: '-1' } },
  { id: 'v/broken', pricing: { prompt: 'free', completion: '0' } },
  { id: 7, pricing: { prompt: '1', completion: '1' } },
  null,
]
const prices = new PriceList(async () => ({ status: 200, body: JSON.stringify({ data: models }) }), '60', createLogger('debug', sink))

t.test('/models entries: prices, context and top_provider', async (t) => {
  const v = parseModel(models[0])!
  t.equal(v.id, 'v/vision')
  t.same({ ...v.price }, {
    prompt: 3_000_000_000_000n, completion: 15_000_000_000_000n, request: 100_000_000_000_000n, image: 4_800_000_000_000_000n,
    audio: 40_000_000_000_000n, cacheWrite: 6_000_000_000_000n, reasoning: 20_000_000_000_000n, contextLength: 1000, maxCompletionTokens: 500,
  }, 'every field, the higher cache-write price')
  const p = parseModel(models[1])!.price
  t.same([p.image, p.audio, p.cacheWrite, p.reasoning, p.contextLength, p.maxCompletionTokens, p.request], [0n, null, null, null, null, null, 0n], 'what is not listed is null')
  t.equal(parseModel(models[2]), null, 'a variable price keeps the ceiling')
  t.equal(parseModel(models[3]), null)
  t.equal(parseModel(models[4]), null)
  t.equal(parseModel(null), null)
  t.equal(parseModel({ id: 'x', pricing: { prompt: '1', completion: '1' }, context_length: 1.5, top_provider: { max_completion_tokens: -3 } })!.price.contextLength, null)
  await prices.refresh()
  t.equal(prices.size, 2)
  t.equal(prices.price('v/router').prompt, 60_000_000_000_000n, 'the ceiling: $60 / M')
  t.equal(prices.price('v/vision:nitro').prompt, 3_000_000_000_000n, 'a variant not listed on its own: its base model\'s price')
  t.equal(prices.price('v/vision:').prompt, 3_000_000_000_000n)
  t.equal(prices.price(':nitro').prompt, 60_000_000_000_000n, 'no base model: the ceiling')
  t.equal(prices.price('v/unknown:nitro').prompt, 60_000_000_000_000n, 'an unknown base: the ceiling')
})

t.test('the estimate from counts and prices', async (t) => {
  const none: PromptCounts = { textTokens: 0, images: 0, audioBytes: 0, files: 0, fileBytes: 0, cacheWrite: false }
  const opts: EstimateOptions = { defaultMaxTokens: 100, imageTokens: 1000, markupPercent: '0' }
  const est = (model: string, c: Partial<PromptCounts>, maxTokens: number | null = 10, o: Partial<EstimateOptions> = {}) =>
    estimateBilledUsd({ model, counts: { ...none, ...c }, maxTokens }, prices, { ...opts, ...o })
  // v/vision: prompt 3e-6, completion 15e-6 (reasoning 20e-6 is higher), request 1e-4, image 0.0048
  t.equal(est('v/vision', { textTokens: 100 }), '0.0006', '100 × 3e-6 + 10 × 20e-6 + 1e-4')
  t.equal(est('v/vision', { textTokens: 100, images: 2 }), '0.0102', 'plus two images at the listed price')
  t.equal(est('v/plain', { textTokens: 100, images: 2 }), '0.00212', 'no image price: 1000 prompt tokens each (2100 × 1e-6 + 10 × 2e-6)')
  t.equal(est('v/plain', { images: 1 }, 10, { imageTokens: 5000 }), '0.00502', 'BUDGET_IMAGE_TOKENS sets it')
  t.equal(est('v/vision', { textTokens: 100, cacheWrite: true }), '0.0009', 'caching asked for: the 1h cache-write price, 6e-6')
  t.equal(est('v/vision', { audioBytes: 160 * AUDIO_BYTES_PER_TOKEN }), '0.0067', '160 audio tokens at 4e-5')
  t.equal(est('v/plain', { audioBytes: 160 * AUDIO_BYTES_PER_TOKEN }), '0.00018', 'no audio price: the prompt price')
  t.equal(est('v/plain', { files: 1, fileBytes: 5000 }), '0.00502', 'a file: a token per byte')
  t.equal(est('v/vision', { textTokens: 1_000_000 }), '0.0033', 'the prompt is capped at context_length (1000)')
  t.equal(est('v/vision', { textTokens: 900, audioBytes: 900 * AUDIO_BYTES_PER_TOKEN }), '0.0366', 'capped, dearest first: 900 audio + 100 text tokens')
  t.equal(est('v/vision', {}, 100_000), '0.0101', 'completion capped at max_completion_tokens (500 × 2e-5 + 1e-4)')
  t.equal(est('v/vision', {}, null), '0.0021', 'BUDGET_DEFAULT_MAX_TOKENS below the cap: 100')
  t.equal(est('v/plain', {}, 100_000), '0.2', 'no cap listed: what was asked for')
  t.equal(est('nobody/knows', { textTokens: 1000, images: 1 }, 1000), '0.18', 'unknown model: the ceiling, and an image as 1000 tokens')
  t.equal(est('v/plain', { textTokens: 100 }, 10, { markupPercent: '12.5' }), '0.000135', 'markup')
})
