-- Who proved possession of a file's bytes. A block's files_v0 is whatever its owner pushed, so
-- block_files alone only says that a user CLAIMS a hash; a file is readable by a user whose
-- block holds it AND who either sent the bytes (verified: a direct upload or a completed
-- resumable one writes a grant here) or had them in a scanned folder (a scan_entries file row
-- of one of the user's heaps: the scan hashed them). Knowing a hash never hands over a file.
CREATE TABLE file_grants (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash       TEXT NOT NULL,              -- lowercase hex SHA-256
    created_at BIGINT NOT NULL,            -- ms
    PRIMARY KEY (user_id, hash)
);
CREATE INDEX file_grants_hash ON file_grants (hash);
-- Backfill: the owner of every heap whose blocks hold a stored file keeps access to it. Claims
-- made before this upgrade cannot be told apart from uploads (the server kept no record of
-- who sent bytes), so all of them are trusted once; hashes with no stored file get nothing.
INSERT INTO file_grants (user_id, hash, created_at)
    SELECT DISTINCT h.owner_id, b.hash, (extract(epoch FROM now()) * 1000)::bigint
    FROM block_files b JOIN heaps h ON h.id = b.heap_id JOIN files f ON f.hash = b.hash
    ON CONFLICT DO NOTHING;
