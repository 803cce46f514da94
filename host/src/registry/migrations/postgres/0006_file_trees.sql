-- Files shipped with apps (`files` in app.toml; SQLite's migration 13):
-- each tree's manifest by its digest, and each file's bytes by theirs, so
-- any node rebuilds a tree that was deployed from another.
CREATE TABLE file_trees (
    digest      TEXT PRIMARY KEY,
    manifest    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE file_blobs (
    digest      TEXT PRIMARY KEY,
    bytes       BYTEA NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
