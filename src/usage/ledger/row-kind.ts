import type { IncomingHttpHeaders } from 'node:http'

// What a row was for. Open WebUI spends money on background tasks (titles, tags, follow-ups,
// search queries, autocomplete, image prompts) through the same chat/completions endpoint as the
// chat itself; users want to see them apart. Sources, most trusted first:
//   1. the task header, when the Open WebUI connection sets one (`X-OpenWebUI-Task: {{TASK}}`);
//   2. Open WebUI's default task prompts: a non-streamed request whose single user message
//      begins with `### Task:`; the task is named from the prompt's first line when it can be;
//   3. `chat` when the request came from Open WebUI (its identity headers are present);
//   4. `api`: a client with no chat app.
// Pure: headers and a few facts about the body in, a label out.

export interface RowKindOptions {
  /** Lower-cased header names (TASK_HEADER, MESSAGE_ID_HEADER). */
  taskHeader: string
  messageIdHeader: string
  /** Headers only a chat app sends (the identity headers): their presence means `chat`. */
  appHeaders: Set<string>
}

export interface BodyFacts {
  streamed: boolean
  /** The request's `messages`, read only when the heuristic needs them (non-stream, no header). */
  messages: () => unknown
}

export const DEFAULT_ROW_KIND_OPTIONS: RowKindOptions = {
  taskHeader: 'x-openwebui-task',
  messageIdHeader: 'x-openwebui-message-id',
  appHeaders: new Set(['x-openwebui-user-id', 'x-openwebui-user-jwt', 'x-openwebui-chat-id']),
}

const TASK_NAME = /^[a-z][a-z0-9_]{0,63}$/

// First line of Open WebUI's default task prompts -> the name Open WebUI gives the task.
// Title first: its prompt mentions an emoji too.
const PROMPT_TASKS: Array<[RegExp, string]> = [
  [/\btitle\b/i, 'title_generation'],
  [/\btags?\b/i, 'tags_generation'],
  [/follow-?up/i, 'follow_up_generation'],
  [/search quer/i, 'query_generation'],
  [/autocomplet/i, 'autocomplete_generation'],
  [/image generation|image prompt/i, 'image_prompt_generation'],
  [/\bemoji\b/i, 'emoji_generation'],
]

function header (headers: IncomingHttpHeaders, name: string): string | null {
  const v = headers[name]
  const s = Array.isArray(v) ? v[0] : v
  if (s === undefined) return null
  const t = s.trim()
  return t === '' ? null : t
}

/** `chat`, a task name, `task` (a task whose name the prompt does not reveal), or `api`. */
export function classifyRowKind (headers: IncomingHttpHeaders, body: BodyFacts, o: RowKindOptions = DEFAULT_ROW_KIND_OPTIONS): string {
  const declared = header(headers, o.taskHeader)?.toLowerCase()
  // An old Open WebUI sends its template unfilled ("{{TASK}}"): that says nothing.
  if (declared && TASK_NAME.test(declared)) return declared
  if (!body.streamed) {
    const task = taskFromPrompt(body.messages())
    if (task) return task
  }
  for (const name of o.appHeaders) if (headers[name] !== undefined) return 'chat'
  if (declared !== undefined || header(headers, o.messageIdHeader) !== null) return 'chat'
  return 'api'
}

/** Open WebUI's message id, when the connection forwards it (`{{MESSAGE_ID}}`). */
export function messageIdOf (headers: IncomingHttpHeaders, o: RowKindOptions = DEFAULT_ROW_KIND_OPTIONS): string | null {
  const id = header(headers, o.messageIdHeader)
  if (id === null || id.length > 200 || id.includes('{{')) return null
  return id
}

/** The task named by a default Open WebUI task prompt, `task` for another `### Task:` prompt, else null. */
export function taskFromPrompt (messages: unknown): string | null {
  if (!Array.isArray(messages) || messages.length !== 1) return null
  const m = messages[0] as { role?: unknown, content?: unknown } | null
  if (m === null || typeof m !== 'object' || m.role !== 'user') return null
  const text = contentText(m.content)
  if (text === null) return null
  const body = text.trimStart()
  if (!body.startsWith('### Task:')) return null
  const statement = body.slice('### Task:'.length).trimStart().split('\n', 1)[0]
  for (const [re, name] of PROMPT_TASKS) if (re.test(statement)) return name
  return 'task'
}

function contentText (content: unknown): string | null {
  if (typeof content === 'string') return content
  if (Array.isArray(content)) {
    const first = content[0] as { type?: unknown, text?: unknown } | undefined
    if (first && first.type === 'text' && typeof first.text === 'string') return first.text
  }
  return null
}
