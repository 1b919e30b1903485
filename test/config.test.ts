import t from 'tap'
import { MAIN, runNode } from './support/child.js'
import { ConfigError, loadConfig } from '../src/config/config.js'

const good = { OPENROUTER_API_KEY: 'sk-or-v1-abcdef123456', OPENROUTER_EXTERNAL_USER: 'mai_client_63a4eb6d', ORGANIZATION_NAME: 'Acme', DATABASE_URL: 'postgres://u@h/db' }

t.test('defaults', async (t) => {
  const c = loadConfig(good)
  t.equal(c.openrouter.baseUrl, 'https://openrouter.ai/api/v1')
  t.equal(c.server.port, 8787)
  t.equal(c.server.host, '127.0.0.1', 'no PROXY_API_KEY: loopback only')
  t.equal(c.organization.markupPercent, '0')
  t.equal(c.identity.userIdHeader, 'x-openwebui-user-id')
  t.equal(c.identity.chatIdHeader, 'x-openwebui-chat-id')
  t.equal(c.server.proxyApiKey, undefined)
})

t.test('every problem is reported at once, each naming its variable', async (t) => {
  const err = t.throws(() => loadConfig({ PORT: 'eighty', MARKUP_PERCENT: '-5', OPENROUTER_BASE_URL: 'ftp://x', LOG_LEVEL: 'loud' })) as ConfigError
  t.type(err, ConfigError)
  const text = err.problems.join('\n')
  for (const name of ['OPENROUTER_API_KEY', 'OPENROUTER_EXTERNAL_USER', 'ORGANIZATION_NAME', 'PORT', 'MARKUP_PERCENT', 'OPENROUTER_BASE_URL', 'LOG_LEVEL']) {
    t.match(text, new RegExp(`^${name} `, 'm'), `names ${name}`)
  }
  t.match(text, /OPENROUTER_API_KEY is required but not set/)
})

t.test('values are checked, not only presence', async (t) => {
  t.throws(() => loadConfig({ ...good, OPENROUTER_EXTERNAL_USER: 'has spaces' }), /OPENROUTER_EXTERNAL_USER/)
  t.throws(() => loadConfig({ ...good, OPENROUTER_EXTERNAL_USER: 'x'.repeat(101) }), /OPENROUTER_EXTERNAL_USER/)
  t.throws(() => loadConfig({ ...good, DATABASE_URL: 'mysql://x' }), /DATABASE_URL/)
  t.throws(() => loadConfig({ ...good, OPENROUTER_API_KEY: 'sk-or-v1-REPLACE_ME' }), /OPENROUTER_API_KEY is still the gen-env placeholder/)
  t.throws(() => loadConfig({ ...good, MARKUP_PERCENT: '1.23456' }), /MARKUP_PERCENT/)
  t.throws(() => loadConfig({ ...good, FORWARD_USER_INFO_HEADER_USER_ID: 'bad header' }), /FORWARD_USER_INFO_HEADER_USER_ID/)
  t.equal(loadConfig({ ...good, MARKUP_PERCENT: '12.5' }).organization.markupPercent, '12.5')
  t.throws(() => loadConfig({ ...good, CLIENT_HEADERS_TIMEOUT_MS: '5000', CLIENT_REQUEST_TIMEOUT_MS: '1000' }), /CLIENT_HEADERS_TIMEOUT_MS must not exceed CLIENT_REQUEST_TIMEOUT_MS/)
  t.equal(loadConfig({ ...good, PROXY_API_KEY: '' }).server.proxyApiKey, undefined, 'empty means unset')
  t.equal(loadConfig({ ...good, OPENROUTER_BASE_URL: 'http://127.0.0.1:9/api/v1/' }).openrouter.baseUrl, 'http://127.0.0.1:9/api/v1')
})

t.test('the process exits 2 with the problems on stderr, and never echoes the key', async (t) => {
  const r = runNode([MAIN], { OPENROUTER_API_KEY: 'sk-or-v1-SECRET-do-not-print', PORT: '99999' })
  t.equal(r.status, 2)
  t.match(r.stderr, /OPENROUTER_EXTERNAL_USER is required/)
  t.match(r.stderr, /ORGANIZATION_NAME is required/)
  t.match(r.stderr, /PORT /)
  t.notMatch(r.stderr + r.stdout, /SECRET-do-not-print/)
})

t.test('without PROXY_API_KEY: loopback, unless HOST is named together with ALLOW_UNAUTHENTICATED=true', async (t) => {
  t.equal(loadConfig(good).server.host, '127.0.0.1', 'no key, no HOST: loopback')
  t.equal(loadConfig({ ...good, PROXY_API_KEY: 'k'.repeat(20) }).server.host, '0.0.0.0', 'with a key: every interface')
  t.equal(loadConfig({ ...good, HOST: '127.0.0.1' }).server.host, '127.0.0.1')
  t.equal(loadConfig({ ...good, HOST: '::1' }).server.host, '::1')
  const err = t.throws(() => loadConfig({ ...good, HOST: '0.0.0.0' })) as ConfigError
  t.match(err.problems.join('\n'), /^PROXY_API_KEY is not set, so HOST=0\.0\.0\.0 .*ALLOW_UNAUTHENTICATED=true/m, 'names the three variables')
  t.throws(() => loadConfig({ ...good, HOST: '0.0.0.0', ALLOW_UNAUTHENTICATED: 'false' }), /PROXY_API_KEY/)
  t.throws(() => loadConfig({ ...good, ALLOW_UNAUTHENTICATED: 'maybe' }), /ALLOW_UNAUTHENTICATED/)
  t.equal(loadConfig({ ...good, HOST: '0.0.0.0', ALLOW_UNAUTHENTICATED: 'true' }).server.host, '0.0.0.0', 'said explicitly: allowed')
  t.equal(loadConfig({ ...good, ALLOW_UNAUTHENTICATED: 'true' }).server.host, '127.0.0.1', 'ALLOW_UNAUTHENTICATED alone does not open it')
})

t.test('APP_URL is unset by default; the chat-id header also goes by Open WebUI\'s own variable name', async (t) => {
  t.equal(loadConfig(good).openrouter.appUrl, undefined)
  t.equal(loadConfig({ ...good, APP_URL: 'https://chat.example.com' }).openrouter.appUrl, 'https://chat.example.com')
  t.equal(loadConfig({ ...good, FORWARD_SESSION_INFO_HEADER_CHAT_ID: 'X-Chat' }).identity.chatIdHeader, 'x-chat', 'Open WebUI\'s name')
  t.equal(loadConfig({ ...good, FORWARD_SESSION_INFO_HEADER_CHAT_ID: 'X-Chat', FORWARD_USER_INFO_HEADER_CHAT_ID: 'X-Ours' }).identity.chatIdHeader, 'x-ours', 'ours wins when both are set')
  t.throws(() => loadConfig({ ...good, FORWARD_SESSION_INFO_HEADER_CHAT_ID: 'bad header' }), /FORWARD_SESSION_INFO_HEADER_CHAT_ID/)
})

t.test('operations settings', async (t) => {
  const c = loadConfig(good)
  t.equal(c.accessLog, true)
  t.same(c.metrics, { apiKey: undefined, port: undefined, host: '127.0.0.1', maxModels: 50 })
  t.same(c.rowKinds, { taskHeader: 'x-openwebui-task', messageIdHeader: 'x-openwebui-message-id' })
  t.equal(loadConfig({ ...good, ACCESS_LOG: 'off' }).accessLog, false)
  t.throws(() => loadConfig({ ...good, ACCESS_LOG: 'maybe' }), /ACCESS_LOG/)
  t.throws(() => loadConfig({ ...good, METRICS_API_KEY: 'short' }), /METRICS_API_KEY/)
  t.throws(() => loadConfig({ ...good, METRICS_PORT: '70000' }), /METRICS_PORT/)
  t.equal(loadConfig({ ...good, TASK_HEADER: 'X-Task' }).rowKinds.taskHeader, 'x-task')
})

t.test('export settings: each sink off until its variable is set, checked at start', async (t) => {
  const off = loadConfig(good)
  t.equal(off.export.stripe, null)
  t.equal(off.export.cloudEvents, null)
  const on = loadConfig({ ...good, STRIPE_SECRET_KEY: 'sk_test_0123456789abc', STRIPE_CUSTOMER_ID: 'cus_Abc123', CLOUDEVENTS_URL: 'https://meter.example/events' })
  t.same(on.export.stripe, { secretKey: 'sk_test_0123456789abc', apiBase: 'https://api.stripe.com', eventName: 'llm_usage', value: 'billed_micro_usd', customerId: 'cus_Abc123' })
  t.same(on.export.cloudEvents, { url: 'https://meter.example/events', secret: undefined, source: good.OPENROUTER_EXTERNAL_USER, batchSize: 100 })
  const err = t.throws(() => loadConfig({ ...good, STRIPE_CUSTOMER_ID: 'cus_Abc123' })) as ConfigError
  t.match(err.message, /STRIPE_CUSTOMER_ID is set without STRIPE_SECRET_KEY/)
  const bad = t.throws(() => loadConfig({ ...good, STRIPE_SECRET_KEY: 'pk_live_nope0000000', STRIPE_METER_VALUE: 'dollars', CLOUDEVENTS_BATCH_SIZE: '0' })) as ConfigError
  t.match(bad.message, /STRIPE_SECRET_KEY must be a Stripe secret/)
  t.match(bad.message, /STRIPE_METER_VALUE/)
  t.match(bad.message, /CLOUDEVENTS_BATCH_SIZE/)
  t.notMatch(bad.message, /pk_live_nope/, 'the key itself is not repeated')
})
