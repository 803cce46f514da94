-- Snapshots of volumes (see `registry::snapshots`).

CREATE TABLE snapshots (
    volume_id   TEXT NOT NULL REFERENCES volumes (id),
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    -- What the snapshot copied when it was taken.
    bytes       INTEGER NOT NULL,
    files       INTEGER NOT NULL,
    PRIMARY KEY (volume_id, name)
);
