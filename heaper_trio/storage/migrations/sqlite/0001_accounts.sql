-- Accounts, login challenges and refresh-token families.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id               TEXT PRIMARY KEY,
    public_key       TEXT NOT NULL UNIQUE,
    email            TEXT,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'rejected')),
    is_admin         INTEGER NOT NULL DEFAULT 0,
    token_generation INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    approved_at      INTEGER
);

CREATE TABLE challenges (
    challenge  TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX challenges_expires ON challenges (expires_at);

CREATE TABLE refresh_tokens (
    jti        TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    rotated_at INTEGER,
    revoked_at INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);
