-- Full-text search over block titles and text ('simple': no stemming, like SQLite's unicode61).
ALTER TABLE blocks ADD COLUMN search tsvector GENERATED ALWAYS AS (
    to_tsvector('simple', title || ' ' || text)
) STORED;
CREATE INDEX blocks_search ON blocks USING GIN (search);
CREATE INDEX blocks_heap_created ON blocks (heap_id, created_at);
CREATE INDEX blocks_heap_title ON blocks (heap_id, title COLLATE "C");
