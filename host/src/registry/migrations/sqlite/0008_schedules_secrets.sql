-- Calls gain the tick they ran for and the state `skipped`, which a CHECK
-- names, so the table is rebuilt (SQLite cannot alter a CHECK): migrations
-- run with foreign keys off, so dropping the old table leaves the attempts
-- and output that reference it alone. Then the schedules' next ticks, and
-- the secrets (see `registry::secrets`).
--
-- The rebuild copies every column `calls` had after migration 5; a
-- migration before this one that adds a column to `calls` must add it here.

CREATE TABLE calls_new (
    id              TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL REFERENCES apps (id),
    function        TEXT NOT NULL,
    state           TEXT NOT NULL
                    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    error           TEXT,
    module          TEXT,
    args            TEXT NOT NULL DEFAULT '[]',
    env             TEXT NOT NULL DEFAULT '{}',
    holder          TEXT,
    node            TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    max_attempts    INTEGER NOT NULL DEFAULT 1,
    run_after       INTEGER NOT NULL DEFAULT 0,
    exit_code       INTEGER,
    dropped_stdout  INTEGER NOT NULL DEFAULT 0,
    dropped_stderr  INTEGER NOT NULL DEFAULT 0,
    released_at     INTEGER,
    -- The schedule's tick (Unix ms) a call ran or was skipped for.
    tick            INTEGER,
    CHECK (CASE state WHEN 'queued' THEN started_at IS NULL
                      WHEN 'skipped' THEN started_at IS NULL
                      WHEN 'cancelled' THEN 1
                      ELSE started_at IS NOT NULL END),
    CHECK ((state IN ('queued', 'running')) = (finished_at IS NULL))
);
INSERT INTO calls_new (id, app_id, function, state, created_at, started_at, finished_at, error, module,
                       args, env, holder, node, attempts, max_attempts, run_after, exit_code,
                       dropped_stdout, dropped_stderr, released_at)
SELECT id, app_id, function, state, created_at, started_at, finished_at, error, module,
       args, env, holder, node, attempts, max_attempts, run_after, exit_code,
       dropped_stdout, dropped_stderr, released_at FROM calls;
DROP TABLE calls;
ALTER TABLE calls_new RENAME TO calls;
CREATE INDEX calls_by_app ON calls (app_id, id);
CREATE INDEX calls_running ON calls (app_id, function) WHERE state = 'running';
CREATE INDEX calls_queue ON calls (run_after, created_at) WHERE state = 'queued';
-- One call per tick, whatever a node does wrong.
CREATE UNIQUE INDEX calls_by_tick ON calls (app_id, function, tick) WHERE tick IS NOT NULL;
-- Whether a tick's previous call is still going.
CREATE INDEX calls_ticking ON calls (app_id, function)
    WHERE tick IS NOT NULL AND state IN ('queued', 'running');
-- The next tick of each scheduled function of a deployed app, and the
-- schedule it was computed from (a deploy that changes it starts anew).
CREATE TABLE schedules (
    app_id      TEXT NOT NULL REFERENCES apps (id),
    function    TEXT NOT NULL,
    schedule    TEXT NOT NULL,
    next_tick   INTEGER NOT NULL,
    PRIMARY KEY (app_id, function)
);
CREATE INDEX schedules_due ON schedules (next_tick);
-- Named sets of environment variables, sealed (see `secrets`): the names
-- of their variables in clear, for listing; their values only sealed.
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    keys        TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    sealed      BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
