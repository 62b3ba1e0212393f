-- Full-text search per line (issue 12 item 4): one row per distinct non-empty line of a
-- block's title and text, so that a push re-indexes the lines it changed, not the whole text
-- (storage/search_lines.py). Replaces the blocks.search column (0008), which indexed title
-- and text whole on every update. Words are split as 0008 does (heaper_search_vector).
ALTER TABLE blocks DROP COLUMN IF EXISTS search;  -- and its index blocks_search

-- A line's key, computed here on both sides (write and lookup), so no client code must agree
-- with PostgreSQL's md5 on bytes. Rows are matched on the body too: a collision is harmless.
CREATE OR REPLACE FUNCTION heaper_line_key(body text) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ('x' || substr(md5(body), 1, 16))::bit(64)::bigint
$$;

CREATE TABLE block_lines (
    block_id TEXT NOT NULL REFERENCES blocks (id) ON DELETE CASCADE,
    key      BIGINT NOT NULL GENERATED ALWAYS AS (heaper_line_key(body)) STORED,
    body     TEXT NOT NULL,
    uses     INTEGER NOT NULL,  -- how many times the line occurs in title and text
    -- A line's first 100,000 characters: one tsvector holds at most 1 MB, and a single pasted
    -- paragraph of ~100k distinct words (a log, a CSV) would refuse the whole push (a 500)
    search   tsvector GENERATED ALWAYS AS (heaper_search_vector(left(body, 100000))) STORED
);
CREATE INDEX block_lines_key ON block_lines (block_id, key);
CREATE INDEX block_lines_search ON block_lines USING GIN (search);

-- Existing blocks, indexed once.
INSERT INTO block_lines (block_id, body, uses)
SELECT b.id, l.body, count(*)
FROM blocks b,
     regexp_split_to_table(b.title || E'\n' || b.text, E'\n') AS l(body)
WHERE l.body <> ''
GROUP BY b.id, l.body;
