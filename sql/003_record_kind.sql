-- What a row was for: `chat` (a user's turn), an Open WebUI background task (title_generation,
-- tags_generation, ...), or `api` (a client with no chat app). Open WebUI's message id ties a
-- row to one answer in the chat. Rows written before this migration were not classified: 'api'.
ALTER TABLE usage_events
  ADD COLUMN kind       text NOT NULL DEFAULT 'api',
  ADD COLUMN message_id text;
