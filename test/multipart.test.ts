import t from 'tap'
import { multipartBoundary, multipartType, scanMultipart } from '../src/proxy/body/multipart.js'

// The multipart reader alone: which content types it takes, which parts are `user`, and what it
// refuses because parsers could read it differently.

t.test('the boundary of a multipart/form-data content type, and nothing else', async (t) => {
  t.equal(multipartBoundary('multipart/form-data; boundary=abc'), 'abc')
  t.equal(multipartBoundary('Multipart/Form-Data;boundary="a b;c"'), 'a b;c')
  t.equal(multipartBoundary('multipart/form-data; charset=utf-8; boundary=x'), 'x')
  t.equal(multipartBoundary('multipart/form-data; boundary="q\\"x"'), 'q"x', 'quoted-pair')
  t.equal(multipartBoundary('multipart/form-data'), null)
  t.equal(multipartBoundary('multipart/form-data; boundary='), null)
  t.equal(multipartBoundary(`multipart/form-data; boundary=${'b'.repeat(71)}`), null, 'over 70 characters')
  t.equal(multipartBoundary('multipart/mixed; boundary=abc'), null)
  t.equal(multipartBoundary('application/json'), null)
  t.equal(multipartBoundary(undefined), null)
})

const body = (...parts: string[]) => Buffer.from(parts.join(''))
const part = (headers: string, content: string) => `--b\r\n${headers}\r\n\r\n${content}\r\n`

t.test('user parts, however the name is written', async (t) => {
  const cases: Array<[string, string, boolean]> = [
    ['quoted', 'Content-Disposition: form-data; name="user"', true],
    ['token', 'content-disposition: form-data; name=user', true],
    ['quoted-pair', 'Content-Disposition: form-data; name="us\\er"', true],
    ['RFC 5987', "Content-Disposition: form-data; name*=UTF-8''%75ser", true],
    ['after other headers', 'Content-Type: text/plain\r\nContent-Disposition: form-data; filename="f"; name="user"', true],
    ['another field', 'Content-Disposition: form-data; name="users"', false],
    ['no disposition', 'Content-Type: text/plain', false],
  ]
  for (const [name, headers, isUser] of cases) {
    const form = scanMultipart(body(part(headers, 'client'), '--b--'), 'b')
    t.ok(form, name)
    t.equal(form!.user, isUser ? 'client' : undefined, name)
    const out = form!.withUser('ours').toString()
    t.equal(out, isUser ? body(part(headers, 'ours'), '--b--').toString() : body(part(headers, 'client'), part('Content-Disposition: form-data; name="user"', 'ours'), '--b--').toString(), name)
  }
})

t.test('shapes that are read, and shapes that are refused', async (t) => {
  t.same(scanMultipart(body('--b--'), 'b')!.withUser('u').toString(), '--b\r\nContent-Disposition: form-data; name="user"\r\n\r\nu\r\n--b--', 'no parts at all')
  t.ok(scanMultipart(body('--b \t\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--'), 'b'), 'transport padding after a boundary')
  t.ok(scanMultipart(body('--b\r\n\r\nno headers\r\n--b--'), 'b'), 'a part without headers')
  t.equal(scanMultipart(body('--b\r\nContent-Disposition: form-data; name="a"'), 'b'), null, 'headers never end')
  t.equal(scanMultipart(body('--bx\r\n\r\n1\r\n--b--'), 'b'), null, 'a longer boundary is not this one')
  t.equal(scanMultipart(body(''), 'b'), null, 'empty')
  t.equal(scanMultipart(body('--b\r\n: no name\r\n\r\n1\r\n--b--'), 'b'), null, 'a header without a name')
})

t.test('a part whose name parsers could read two ways is refused', async (t) => {
  t.equal(scanMultipart(body(part('Content-Disposition: form-data; name="file"\r\nContent-Disposition: form-data; name="user"', 'client'), '--b--'), 'b'), null,
    'two Content-Disposition headers: one parser reads the first, another the last')
  t.equal(scanMultipart(body(part('Content-Disposition: form-data; name="user"; name*=UTF-8\'\'other', 'client'), '--b--'), 'b'), null,
    'name and name* disagree: the upstream parser may read `user`, which would then keep the client\'s value')
  t.ok(scanMultipart(body(part('Content-Disposition: form-data; name="user"; name*=UTF-8\'\'user', 'client'), '--b--'), 'b'), 'name and name* that agree are read')
})

t.test('every user part is replaced, not only the last', async (t) => {
  const raw = body(part('Content-Disposition: form-data; name="user"', 'first'), part('Content-Disposition: form-data; name="model"', 'm'),
    part('Content-Disposition: form-data; name="user"', 'second'), '--b--\r\n')
  const form = scanMultipart(raw, 'b')!
  t.equal(form.user, 'second', 'the last one is the one read')
  const out = form.withUser('ours').toString()
  t.notMatch(out, /first|second/, 'neither client value is left')
  t.equal(out.split('\r\n\r\nours\r\n').length - 1, 2, 'both parts carry ours')
})

t.test('a parameter given twice, in any case, quoted or not, or written ambiguously, is refused', async (t) => {
  const refused = [
    'multipart/form-data; boundary=a; boundary=b',
    'multipart/form-data; boundary=a; boundary=a',
    'multipart/form-data; boundary=a; BOUNDARY=b',
    'multipart/form-data; boundary="a"; Boundary=a',
    'multipart/form-data; boundary="a;b"; boundary=c',
    'multipart/form-data; charset=utf-8; boundary=a; charset=latin1',
    'multipart/form-data; x; boundary=a',
    'multipart/form-data; boundary="a',
    'multipart/form-data; boundary="a"b',
    'multipart/form-data; =a; boundary=b',
  ]
  for (const ct of refused) {
    t.match(multipartType(ct), { error: /twice or written ambiguously/ }, ct)
    t.equal(multipartBoundary(ct), null, ct)
  }
  t.same(multipartType('multipart/form-data; boundary="a" ; charset=utf-8;'), { boundary: 'a' }, 'space after a quoted value, a trailing semicolon')
  t.equal(multipartType('multipart/form-data'), null, 'no boundary: not a usable upload type (415), as before')
  t.equal(multipartType('text/plain; boundary=a; boundary=b'), null, 'another type is not looked into')
  const dup = [
    'Content-Disposition: form-data; name="file"; name="user"',
    'Content-Disposition: form-data; name="user"; name="user"',
    'Content-Disposition: form-data; name=user; NAME="file"',
    'Content-Disposition: form-data; Name="user"; name=file',
    "Content-Disposition: form-data; name*=UTF-8''user; name*=UTF-8''file",
    'Content-Disposition: form-data; filename="a"; name="user"; filename="b"',
    'Content-Disposition: form-data; x; name="user"',
    'Content-Disposition: form-data; name="user',
    'Content-Disposition: form-data; name="us"er',
  ]
  for (const headers of dup) t.equal(scanMultipart(body(part(headers, 'client'), '--b--'), 'b'), null, headers)
  t.ok(scanMultipart(body(part('Content-Disposition: form-data; name="user" ; filename="f";', 'client'), '--b--'), 'b'), 'space and a trailing semicolon are fine')
})
