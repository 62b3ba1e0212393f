-- Usage counters for POST /api/me (issue 12, item 3): each heap carries the number and total
-- size of its blocks, kept exact by triggers in the transaction of every write that changes
-- them (commits, scans, trash purge, heap deletion), so usage sums a user's heap rows instead
-- of joining and counting every block on each request.
ALTER TABLE heaps ADD COLUMN block_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE heaps ADD COLUMN block_bytes INTEGER NOT NULL DEFAULT 0;

UPDATE heaps SET
    block_count = (SELECT COUNT(*) FROM blocks b WHERE b.heap_id = heaps.id),
    block_bytes = (SELECT COALESCE(SUM(b.size), 0) FROM blocks b WHERE b.heap_id = heaps.id);

CREATE TRIGGER blocks_usage_insert AFTER INSERT ON blocks
BEGIN
    UPDATE heaps SET block_count = block_count + 1, block_bytes = block_bytes + NEW.size
    WHERE id = NEW.heap_id;
END;

CREATE TRIGGER blocks_usage_delete AFTER DELETE ON blocks
BEGIN
    UPDATE heaps SET block_count = block_count - 1, block_bytes = block_bytes - OLD.size
    WHERE id = OLD.heap_id;
END;

CREATE TRIGGER blocks_usage_update AFTER UPDATE OF size, heap_id ON blocks
WHEN OLD.size IS NOT NEW.size OR OLD.heap_id IS NOT NEW.heap_id
BEGIN
    UPDATE heaps SET block_count = block_count - 1, block_bytes = block_bytes - OLD.size
    WHERE id = OLD.heap_id;
    UPDATE heaps SET block_count = block_count + 1, block_bytes = block_bytes + NEW.size
    WHERE id = NEW.heap_id;
END;

-- Live sessions depend on the clock (expiry), so they are still counted per request, but only
-- over the rows of live families (one each): a covering index of a handful of rows per user.
CREATE INDEX refresh_tokens_live ON refresh_tokens (user_id, expires_at, family)
    WHERE rotated_at IS NULL AND revoked_at IS NULL;
