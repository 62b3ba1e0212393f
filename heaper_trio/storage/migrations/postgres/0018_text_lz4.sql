-- A block's text and snapshot compressed with lz4 rather than pglz (issue 12 item 4): every
-- push rewrites the block's whole text, and PostgreSQL compresses a large one again each time.
-- Measured on an 8.6 MB text: an UPDATE took 190-198 ms with pglz, 118-128 ms with lz4 (the
-- compressed value 17% larger). Only values written from now on use it. A server built
-- without lz4 (or older than PostgreSQL 14) keeps pglz: the setting is an optimisation.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE blocks ALTER COLUMN text SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE blocks ALTER COLUMN snapshot SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'lz4 compression unavailable, blocks keep pglz: %', SQLERRM;
END
$$;
