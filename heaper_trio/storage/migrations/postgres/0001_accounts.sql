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
    is_admin         BOOLEAN NOT NULL DEFAULT FALSE,
    token_generation INTEGER NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    approved_at      BIGINT
);

CREATE TABLE challenges (
    challenge  TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX challenges_expires ON challenges (expires_at);

CREATE TABLE refresh_tokens (
    jti        TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);
