// Money for a person to read, as "My usage" and the 402 write it: a port of formatUsd() in
// src/lib/decimal.ts, line for line (test/money-format.test.ts runs both on the same amounts).
// Half up to the cent with thousands grouped; under a cent, two significant digits; zero "$0.00".
'use strict'
;(function () {
  function formatUsd (text) {
    const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(String(text).trim())
    if (!m) throw new Error(`not a decimal: ${text}`)
    const sign = m[1]; const int = m[2]; const frac = m[3] || ''
    const first = frac.search(/[1-9]/)
    const underCent = /^0+$/.test(int) && first >= 2
    const places = underCent ? first + 2 : 2
    const rounded = (BigInt(int + frac.padEnd(places + 1, '0').slice(0, places + 1)) + 5n) / 10n
    const s = rounded.toString().padStart(places + 1, '0')
    const whole = s.slice(0, -places).replace(/\B(?=(\d{3})+(?!\d))/g, ',')
    const cents = underCent ? s.slice(-places).replace(/0+$/, '').padEnd(2, '0') : s.slice(-places)
    return `${sign && rounded !== 0n ? '-' : ''}$${whole}.${cents}`
  }
  globalThis.usageProxyMoney = Object.freeze({ formatUsd })
})()
