-- Nodes, and leases as rows that their processes renew (see
-- `crate::lease::heartbeat`); SQLite's migration 9.
CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    address     TEXT NOT NULL,
    pid         BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    stopped_at  BIGINT
);
CREATE TABLE leases (
    id           TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX leases_by_owner ON leases (owner);
