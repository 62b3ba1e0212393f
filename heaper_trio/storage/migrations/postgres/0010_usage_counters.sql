-- Usage counters for POST /api/me (issue 12, item 3): each heap carries the number and total
-- size of its blocks, kept exact by triggers in the transaction of every write that changes
-- them (commits, scans, trash purge, heap deletion), so usage sums a user's heap rows instead
-- of joining and counting every block on each request. Every writer of blocks holds its heap
-- row lock already (documents.py's lock order), so the triggers add no lock and no deadlock.
ALTER TABLE heaps
    ADD COLUMN block_count BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN block_bytes BIGINT NOT NULL DEFAULT 0;

UPDATE heaps h SET block_count = s.n, block_bytes = s.bytes
FROM (SELECT heap_id, COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM blocks GROUP BY heap_id) s
WHERE h.id = s.heap_id;

CREATE FUNCTION blocks_usage_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        UPDATE heaps SET block_count = block_count - 1, block_bytes = block_bytes - OLD.size
        WHERE id = OLD.heap_id;
    END IF;
    UPDATE heaps SET block_count = block_count + 1, block_bytes = block_bytes + NEW.size
    WHERE id = NEW.heap_id;
    RETURN NULL;
END;
$$;

-- Deletions come in bulk (a heap's blocks, an emptied trash): one statement-level pass.
CREATE FUNCTION blocks_usage_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE heaps h SET block_count = h.block_count - d.n, block_bytes = h.block_bytes - d.bytes
    FROM (SELECT heap_id, COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes
          FROM gone GROUP BY heap_id) d
    WHERE h.id = d.heap_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER blocks_usage_insert AFTER INSERT ON blocks
    FOR EACH ROW EXECUTE FUNCTION blocks_usage_row();
CREATE TRIGGER blocks_usage_update AFTER UPDATE OF size, heap_id ON blocks
    FOR EACH ROW WHEN (OLD.size IS DISTINCT FROM NEW.size OR OLD.heap_id IS DISTINCT FROM NEW.heap_id)
    EXECUTE FUNCTION blocks_usage_row();
CREATE TRIGGER blocks_usage_delete AFTER DELETE ON blocks
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION blocks_usage_deleted();

-- Live sessions depend on the clock (expiry), so they are still counted per request, but only
-- over the rows of live families (one each): an index of a handful of rows per user.
CREATE INDEX refresh_tokens_live ON refresh_tokens (user_id, expires_at, family)
    WHERE rotated_at IS NULL AND revoked_at IS NULL;

-- Cached user rows (storage/postgres/user_cache.py): every change of a user row, whoever makes
-- it (a server process, the CLI), tells every listening process at COMMIT to drop its copy.
CREATE FUNCTION users_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('heaper_users', OLD.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_changed AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION users_changed();
