// Breaks of the embedded database's server (src/db/pglite-server.ts): one PGlite session shared by
// several clients, each of which must keep its own settings and take its prepared statements along
// when it goes.
const SERVER = ['test/pglite-server.test.ts']
export const BREAKS = [
  {
    name: 'nopg: the session keeps the last client\'s settings for the next',
    file: 'src/db/pglite-server.ts',
    search: '        await this.session.enter(this)\n',
    replace: '',
    tests: SERVER,
  },
  {
    name: 'nopg: settings reset but the next client\'s own not put back',
    file: 'src/db/pglite-server.ts',
    search: '    for (const [name, value] of client.settings) {',
    replace: '    for (const [name, value] of [] as Setting[]) {',
    tests: SERVER,
  },
  {
    name: 'nopg: any two clients taken to carry the same settings',
    file: 'src/db/pglite-server.ts',
    search: '  if (a.length !== b.length) return false\n',
    replace: '  if (a.length !== b.length || a.length >= 0) return true\n',
    tests: SERVER,
  },
  {
    name: 'nopg: a client gone leaves its prepared statements',
    file: 'src/db/pglite-server.ts',
    search: "for (const name of this.statements) await this.db.exec(",
    replace: "for (const name of [] as string[]) await this.db.exec(",
    tests: SERVER,
  },
]
