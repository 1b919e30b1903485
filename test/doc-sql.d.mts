export interface DocumentedStatement { file: string, title: string, sql: string }
export function documentationFiles (root: string): string[]
export function sqlStatements (markdown: string): string[]
export function documentedStatements (root: string): DocumentedStatement[]
export function forOrganization (sql: string, organization: string): string
