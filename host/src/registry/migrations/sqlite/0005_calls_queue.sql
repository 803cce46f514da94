-- Calls as a queue and a record (see `registry::calls`): times in
-- milliseconds, what a node needs to run a queued call, attempts, and
-- output.

UPDATE calls SET created_at = created_at * 1000, started_at = started_at * 1000,
                 finished_at = finished_at * 1000;
ALTER TABLE calls ADD COLUMN args TEXT NOT NULL DEFAULT '[]';
ALTER TABLE calls ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
-- The lease (a node's id, or a calling process's) whose loss ends the call.
ALTER TABLE calls ADD COLUMN holder TEXT;
ALTER TABLE calls ADD COLUMN node TEXT;
ALTER TABLE calls ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 1;
-- A queued call is claimed no earlier than this (a retry's backoff).
ALTER TABLE calls ADD COLUMN run_after INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN exit_code INTEGER;
-- Output bytes past what is kept of each stream.
ALTER TABLE calls ADD COLUMN dropped_stdout INTEGER NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN dropped_stderr INTEGER NOT NULL DEFAULT 0;
-- When whoever ran the current attempt let go of it (a cancelled call's
-- runner may still be unwinding after its `finished_at`).
ALTER TABLE calls ADD COLUMN released_at INTEGER;
UPDATE calls SET attempts = 1 WHERE started_at IS NOT NULL;
UPDATE calls SET released_at = finished_at;
-- Indexes over calls that are not over only, which are few, so recording
-- an ended call touches no more of them than it must.
DROP INDEX calls_by_state;
DROP INDEX calls_by_app;
CREATE INDEX calls_by_app ON calls (app_id, id);
CREATE INDEX calls_running ON calls (app_id, function) WHERE state = 'running';
-- The claim's order, over queued calls only.
CREATE INDEX calls_queue ON calls (run_after, created_at) WHERE state = 'queued';
CREATE TABLE call_attempts (
    call_id     TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    node        TEXT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    exit_code   INTEGER,
    error       TEXT,
    PRIMARY KEY (call_id, attempt)
);
-- Output as it was written: whole lines (with their newlines) of one
-- stream, written between two of the recorder's passes, or the tail of a
-- line still open when its call ended; `time` is when the first was.
CREATE TABLE call_output (
    id          INTEGER PRIMARY KEY,
    call_id     TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    app_id      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    time        INTEGER NOT NULL,
    stream      TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    data        TEXT NOT NULL
);
CREATE INDEX call_output_by_call ON call_output (call_id, attempt, id);
CREATE INDEX call_output_by_app ON call_output (app_id, id);
