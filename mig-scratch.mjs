import postgres from 'postgres'
import { migrate } from '/work/wt-budgetsql/dist/db/migrate.js'
const sql = postgres('postgres://postgres@127.0.0.1:5432/budgetsql_scratch', { max: 1, onnotice: () => {} })
await migrate(sql, '/work/wt-budgetsql/sql')
await sql.end()
