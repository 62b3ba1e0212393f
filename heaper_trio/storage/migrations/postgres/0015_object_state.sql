-- State of the object store that must hold across server processes (issue 14).
-- An upload's S3 multipart upload id: the first process to set it wins (a conditional UPDATE),
-- so two processes racing after a crash agree on one and no part goes to a lost one. NULL on
-- rows from before: looked up in the store once, then stored.
ALTER TABLE uploads ADD COLUMN multipart_id TEXT;

-- An upload that is about to trust (or write) files/<hash> holds a claim on the hash until
-- its block holds the file: the last holder's deletion leaves claimed hashes alone.
CREATE TABLE file_claims (
    hash       TEXT NOT NULL,
    token      TEXT NOT NULL,             -- one per request
    created_at BIGINT NOT NULL,           -- Unix ms; a claim older than an hour is a crash's
    PRIMARY KEY (hash, token)
);
-- A deletion of a hash's bytes under way (its row already dropped): until it ends, an upload
-- of that hash waits instead of trusting a HEAD that the deletion is about to make wrong.
CREATE TABLE file_deletions (
    hash       TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL            -- Unix ms; one older than a minute is a crash's
);

-- System jobs (upload expiry) belong to no user; a user's listing filters by owner anyway.
ALTER TABLE jobs ALTER COLUMN owner_id DROP NOT NULL;
-- One upload expiry sweep at a time in the whole cluster: its row is the lease.
CREATE UNIQUE INDEX jobs_one_active_system ON jobs (kind)
    WHERE owner_id IS NULL AND state IN ('queued', 'running', 'aborting', 'finishing');
