-- The change feed reads its pages from one index alone (issue 12 item 4): the keyset
-- (heap_id, updated_at, id) followed by every other column a delta row answers, so a page of
-- a thousand rows no longer looks each one up in the table. It replaces blocks_heap_updated_id
-- (0011), whose columns it starts with: the feed's ends, its counts and the heap query's sort
-- by update time use it as they used that one. Every change rewrites the entry anyway (its
-- updated_at moves), so writes pay only for the longer entry (the title). Not on PostgreSQL:
-- a btree entry there is limited to a third of a page, and titles have no such bound.
CREATE INDEX blocks_heap_updated_delta
    ON blocks (heap_id, updated_at, id, sync_version, type, title, deleted_at);
DROP INDEX blocks_heap_updated_id;
