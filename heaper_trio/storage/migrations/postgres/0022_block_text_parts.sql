-- A push into a big document costs what the update costs (issue 12 item 4): texts of 256 Ki
-- characters or more are kept in pieces (storage/text_pieces.py), so a typed word rewrites
-- one piece instead of compressing, WAL-logging and sending the whole text again. For them
-- blocks.text holds '' and blocks.text_parts a token (not 0) naming the pieces. Texts stored
-- before stay in the row until their next change. (The snapshot stays in the row here: an
-- UPDATE keeps an unchanged TOAST value as it is.)
CREATE TABLE block_text_parts (
    block_id TEXT NOT NULL REFERENCES blocks (id) ON DELETE CASCADE,
    pos      BIGINT NOT NULL,  -- orders the pieces; gaps leave room for pieces in between
    body     TEXT NOT NULL,
    PRIMARY KEY (block_id, pos)
);
ALTER TABLE blocks ADD COLUMN text_parts BIGINT NOT NULL DEFAULT 0;
DO $$
BEGIN
    EXECUTE 'ALTER TABLE block_text_parts ALTER COLUMN body SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'lz4 compression unavailable, pieces keep pglz: %', SQLERRM;
END
$$;
