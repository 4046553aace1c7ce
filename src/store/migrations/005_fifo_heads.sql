-- Both dialects.
-- Claiming reads two ways: unordered queues by (state, id) among rows without a
-- group, and FIFO queues by the oldest pending message of each group. These two
-- indexes serve them without touching the table rows.
CREATE INDEX queue_messages_unordered ON queue_messages (state, group_key, id);
CREATE INDEX queue_messages_heads ON queue_messages (group_key, queue, id, state);
-- Its range on visible_at_ms lured the planner into sorting every ready message at
-- each claim; expired leases are few and found through (state, ...) as well.
DROP INDEX queue_messages_inflight;
-- Superseded by the two above; every index is paid for by every message written.
DROP INDEX queue_messages_state;
DROP INDEX queue_messages_group;
