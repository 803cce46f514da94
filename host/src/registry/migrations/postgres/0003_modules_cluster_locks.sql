-- Deployed modules' bytes by digest (SQLite's migration 10), so any node
-- runs what was deployed.
CREATE TABLE modules (
    digest      TEXT PRIMARY KEY,
    bytes       BYTEA NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
-- Guest locks across machines: one row per held lock, keyed by the lock's
-- identity (`volume-id/relative/path`), naming the instance that holds it
-- and the lease of its process; a row whose owner's lease expired is free.
-- Fences come from one sequence, so each grant of a key gets a larger one
-- than the last, and a released lock's row can go.
CREATE SEQUENCE cluster_lock_fences;
CREATE TABLE cluster_locks (
    key         TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    owner       TEXT NOT NULL,
    fence       BIGINT NOT NULL,
    -- Unix ms, by the server's clock.
    taken_at    BIGINT NOT NULL
);
CREATE INDEX cluster_locks_by_holder ON cluster_locks (holder);
CREATE INDEX cluster_locks_by_owner ON cluster_locks (owner);
