-- A btree entry holds at most 2,704 bytes, and a block's title has no length limit: a long
-- title (a pasted first line of random characters barely compresses) made its commit fail
-- with "index row size exceeds btree maximum". The title sort's index now holds the first 256
-- characters (at most 1,024 bytes); queries sort by that prefix, then by the whole title, which
-- in byte order ("C") is the same order as the whole title alone.
DROP INDEX blocks_heap_title;
CREATE INDEX blocks_heap_title_prefix ON blocks (heap_id, left(title, 256) COLLATE "C");
