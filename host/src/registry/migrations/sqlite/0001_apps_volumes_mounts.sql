-- The first release: apps, their volumes and mounts.

CREATE TABLE apps (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('ephemeral', 'deployed', 'volume')),
    state       TEXT NOT NULL CHECK (state IN ('running', 'stopped')),
    created_at  INTEGER NOT NULL,
    stopped_at  INTEGER,
    manifest    TEXT,
    has_lease   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX apps_by_name ON apps (name, state);
CREATE TABLE volumes (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps (id),
    key         TEXT,
    name        TEXT,
    created_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX named_volumes ON volumes (name) WHERE name IS NOT NULL;
CREATE TABLE mounts (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    volume_id   TEXT NOT NULL REFERENCES volumes (id),
    key         TEXT NOT NULL,
    PRIMARY KEY (app_id, key)
);
