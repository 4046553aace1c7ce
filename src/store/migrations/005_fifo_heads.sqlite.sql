-- Claiming reads two ways: unordered queues by (state, id) among rows without a
-- group, and FIFO queues by the oldest pending message of each group. These two
-- indexes serve them without touching the table rows.
CREATE INDEX queue_messages_unordered ON queue_messages (state, group_key, id);
CREATE INDEX queue_messages_heads ON queue_messages (queue, group_key, id, state);
