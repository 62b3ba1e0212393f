-- Admin links (`python -m heaper_trio admin-link`): short-lived, single-use sign-ins to the admin
-- page. Only the SHA-256 of the link's secret is kept, so a copy of the database (a backup)
-- holds no usable link. A used or expired row stays until purge_expired drops it, a day after
-- its expiry, so the page can say "already used" or "expired" rather than "unknown".
CREATE TABLE admin_links (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX admin_links_expires ON admin_links (expires_at);
