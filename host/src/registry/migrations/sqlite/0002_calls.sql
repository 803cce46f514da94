-- Calls of deployed apps. A running call also holds a lease named by its
-- id, so a caller that died is told from one still at work. Each state has
-- the timestamps it implies.

CREATE TABLE calls (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps (id),
    function    TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    error       TEXT,
    -- The digest of the module snapshot the call runs: kept while it runs.
    module      TEXT,
    CHECK (CASE state WHEN 'queued' THEN started_at IS NULL
                      WHEN 'cancelled' THEN 1
                      ELSE started_at IS NOT NULL END),
    CHECK ((state IN ('queued', 'running')) = (finished_at IS NULL))
);
CREATE INDEX calls_by_app ON calls (app_id, state);
CREATE INDEX calls_by_state ON calls (state);
