-- The change feed pages by keyset (updated_at, id) within a heap (issue 12): one index serves
-- its ORDER BY (ids in byte order, COLLATE "C", as SQLite), its tie fetch and its counts; it
-- replaces blocks_heap_updated, whose columns it starts with.
CREATE INDEX blocks_heap_updated_id ON blocks (heap_id, updated_at, id COLLATE "C");
DROP INDEX blocks_heap_updated;
