-- Webhook history retention: the hourly purge looks up old attempts,
-- finished (delivered or dead) messages, and events no message refers to.
CREATE INDEX webhook_attempts_time ON webhook_attempts (attempted_at);
CREATE INDEX webhook_messages_finished ON webhook_messages (updated_at)
    WHERE state IN ('delivered', 'dead');
CREATE INDEX webhook_messages_event ON webhook_messages (event_id);
CREATE INDEX events_created ON events (created_at);
