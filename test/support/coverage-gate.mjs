// The coverage floor lives in ONE place: package.json's "tap" section (statements, lines,
// branches, functions). tap compares the run against it and prints "incomplete coverage" only
// below it; "allow-incomplete-coverage" keeps a run of a single test file from failing on
// coverage it was never meant to reach. `npm run test:coverage` runs everything with coverage and
// then this gate, which fails the run below the same floor (`npm test` measures no coverage). It
// prints nothing when the floor holds.
import { readFileSync } from 'node:fs'

const tap = JSON.parse(readFileSync('package.json', 'utf8')).tap
const keys = ['lines', 'statements', 'functions', 'branches']
const missing = keys.filter((k) => typeof tap[k] !== 'number')
if (missing.length > 0) {
  console.error(`coverage: package.json "tap" must set the floor (${missing.join(', ')} missing)`)
  process.exit(1)
}
const total = JSON.parse(readFileSync('.tap/report/coverage-summary.json', 'utf8')).total
const low = keys.filter((k) => total[k].pct < tap[k])
if (low.length > 0) {
  for (const k of low) console.error(`coverage: ${k} ${total[k].pct}% is below the floor of ${tap[k]}%`)
  process.exit(1)
}
