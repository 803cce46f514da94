-- Files shipped with apps (`files` in app.toml), for a cluster: each tree's
-- manifest by its digest, and each file's bytes by theirs, so a machine
-- lacking a tree rebuilds it from here. A one-machine home leaves both
-- empty (its `files/` directory is the store); PostgreSQL's is its
-- migration 6.

CREATE TABLE file_trees (
    digest      TEXT PRIMARY KEY,
    manifest    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE file_blobs (
    digest      TEXT PRIMARY KEY,
    bytes       BLOB NOT NULL,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
