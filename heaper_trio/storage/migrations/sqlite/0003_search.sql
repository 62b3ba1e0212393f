-- Full-text search over block titles and text (FTS5, external content kept in sync by triggers).
CREATE VIRTUAL TABLE blocks_fts USING fts5 (
    title, text, content = 'blocks', content_rowid = 'n', tokenize = 'unicode61'
);
INSERT INTO blocks_fts (rowid, title, text) SELECT n, title, text FROM blocks;

CREATE TRIGGER blocks_fts_insert AFTER INSERT ON blocks BEGIN
    INSERT INTO blocks_fts (rowid, title, text) VALUES (new.n, new.title, new.text);
END;
CREATE TRIGGER blocks_fts_delete AFTER DELETE ON blocks BEGIN
    INSERT INTO blocks_fts (blocks_fts, rowid, title, text)
    VALUES ('delete', old.n, old.title, old.text);
END;
CREATE TRIGGER blocks_fts_update AFTER UPDATE OF title, text ON blocks BEGIN
    INSERT INTO blocks_fts (blocks_fts, rowid, title, text)
    VALUES ('delete', old.n, old.title, old.text);
    INSERT INTO blocks_fts (rowid, title, text) VALUES (new.n, new.title, new.text);
END;

CREATE INDEX blocks_heap_created ON blocks (heap_id, created_at);
CREATE INDEX blocks_heap_title ON blocks (heap_id, title);
