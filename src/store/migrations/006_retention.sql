-- Both dialects.
-- Retention deletes an old event only when no queue message still points at it (a
-- pending or dead-lettered one); this index answers that per event without a scan.
CREATE INDEX queue_messages_event ON queue_messages (event_seq);
