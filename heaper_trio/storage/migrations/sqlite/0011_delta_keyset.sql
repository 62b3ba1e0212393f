-- The change feed pages by keyset (updated_at, id) within a heap (issue 12): one index serves
-- its ORDER BY, its tie fetch and its counts; it replaces blocks_heap_updated, whose columns it
-- starts with (the heap query's sort by update time uses it the same way).
CREATE INDEX blocks_heap_updated_id ON blocks (heap_id, updated_at, id);
DROP INDEX blocks_heap_updated;
