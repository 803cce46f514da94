-- Nodes, and leases as rows: `leases` is filled only in a cluster, where
-- leases are rows. PostgreSQL's migration 2 is the same in its types.

CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    address     TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    stopped_at  INTEGER
);
CREATE TABLE leases (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX leases_by_owner ON leases (owner);
