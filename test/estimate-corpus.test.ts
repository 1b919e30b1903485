import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { countTokens as cl100k } from 'gpt-tokenizer/encoding/cl100k_base'
import { countTokens as o200k } from 'gpt-tokenizer/encoding/o200k_base'
import { countPrompt } from '../src/budgets/prompt-counts.js'

// The prompt estimate against real tokenizers: for every sample of test/fixtures/tokens (natural
// text in many scripts, source code, and adversarial text from generate.mjs), the text tokens
// counted in a chat body holding it are at least what cl100k_base and o200k_base count for the
// text alone, with the body written as JSON.stringify writes it and with every non-ASCII
// character escaped (\uXXXX, as Python's json.dumps writes it). The ratios are printed.

const DIR = new URL('./fixtures/tokens/', import.meta.url)
const files = readdirSync(DIR).filter((f) => f.endsWith('.txt')).sort()
const escaped = (json: string): string => json.replace(/[\u0080-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'))
const body = (text: string): string => JSON.stringify({ model: 'openai/gpt-4o', messages: [{ role: 'user', content: text }] })

t.ok(files.length >= 50, 'the corpus is there')
for (const name of ['english', 'russian', 'greek', 'arabic', 'hindi', 'chinese', 'japanese', 'korean', 'emoji', 'typescript.ts', 'python.py',
  'adversarial-random-printable', 'adversarial-digits', 'adversarial-cjk-rare', 'adversarial-combining-marks']) {
  t.ok(files.includes(`${name}.txt`), `the corpus has ${name}`)
}

const ratios: string[] = []
for (const f of files) {
  const text = readFileSync(new URL(f, DIR), 'utf8')
  const tokens = { cl100k: cl100k(text), o200k: o200k(text) }
  const plain = countPrompt(Buffer.from(body(text))).textTokens
  const ascii = countPrompt(Buffer.from(escaped(body(text)))).textTokens
  for (const [enc, n] of Object.entries(tokens)) {
    t.ok(plain >= n, `${f}: estimate ${plain} >= ${enc} ${n}`)
    t.ok(ascii >= n, `${f}, escaped: estimate ${ascii} >= ${enc} ${n}`)
  }
  const most = Math.max(tokens.cl100k, tokens.o200k)
  ratios.push(`${f.replace(/\.txt$/, '').padEnd(36)} cl100k ${String(tokens.cl100k).padStart(5)}  o200k ${String(tokens.o200k).padStart(5)}  estimate ${String(plain).padStart(5)} (${(plain / most).toFixed(2)}x)  escaped ${(ascii / most).toFixed(2)}x`)
}
t.comment('estimate / tokens (the larger of the two encodings):\n' + ratios.join('\n'))

t.test('the estimate stays near the tokens of ordinary text: it is not bytes as tokens', async (t) => {
  // The bound a byte-level tokenizer guarantees for any text is one token per byte; ordinary
  // Latin text and code would then reserve four times what they cost.
  for (const f of ['english', 'german', 'french', 'spanish', 'typescript.ts', 'python.py', 'json.json']) {
    const text = readFileSync(new URL(`${f}.txt`, DIR), 'utf8')
    const estimate = countPrompt(Buffer.from(body(text))).textTokens
    const most = Math.max(cl100k(text), o200k(text))
    t.ok(estimate <= most * 2.2, `${f}: estimate ${estimate} is at most 2.2 × ${most} tokens`)
    if (f !== 'json.json') t.ok(estimate < Buffer.byteLength(text) * 0.6, `${f}: estimate ${estimate} is well under its ${Buffer.byteLength(text)} bytes`)
  }
  for (const f of ['chinese', 'japanese', 'korean']) {
    const text = readFileSync(new URL(`${f}.txt`, DIR), 'utf8')
    const estimate = countPrompt(Buffer.from(body(text))).textTokens
    t.ok(estimate <= Buffer.byteLength(text) * 1.1, `${f}: estimate ${estimate} is about its ${Buffer.byteLength(text)} bytes, no more`)
  }
})
